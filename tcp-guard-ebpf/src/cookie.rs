//! The syncookie policy's packet work: a SYN answered in place with a cookie
//! SYN-ACK (XDP_TX), and the cookie of an ACK for no known flow checked.
//! Cookies are the kernel's own (`bpf_tcp_raw_*_syncookie_*`), so the
//! listener accepts the ACKs that carry them.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, iphdr, ipv6hdr, tcphdr, xdp_action},
    helpers::{
        bpf_csum_diff, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
        bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use tcp_guard_common::{
    checksum::{ipv4_header_holds, pseudo_header, tcp_checksum_holds},
    flow::{Direction, FlowKey, Seg, cookie_established},
    // (Header sizes from here: aya's bindings declare iphdr and friends
    // opaque, of size 0.)
    packet::{
        Be16, ByteView, Family, IPV4_HDR_LEN, IPV6_HDR_LEN, MAX_TCP_OFFSET, TCP_HDR_LEN, TcpOptions,
        TcpSegment,
    },
    policy::{DropReason, GuardConfig},
    stats::Counter,
    syncookie::{REPLY_MAX_LEN, ReplyBytes, SynAck, build_syn_ack, cookie_tsval},
};

use crate::{
    flow::{EEXIST, fresh_generation},
    guard,
    maps::{CONFIG, CSUM_CHUNK, Counters, FLOWS, SCRATCH},
    options,
    view::{PacketBytes, opaque},
};

/// `data + offset`, if `len` bytes from there are inside the packet. The
/// offset is hidden from the optimiser and bounded, so the verifier sees
/// the check on the very pointer that is used.
#[inline(always)]
fn packet_at(ctx: &XdpContext, offset: usize, len: usize) -> Option<usize> {
    let offset = opaque(offset);
    if offset > 256 {
        return None;
    }
    let at = ctx.data() + offset;
    if at + len > ctx.data_end() {
        return None;
    }
    Some(at)
}

/// Moves the end of the frame by `delta` bytes; false when the frame has no
/// room (then nothing changed).
#[inline(always)]
fn adjust_tail(ctx: &XdpContext, delta: i64) -> bool {
    // SAFETY: a helper on this program's own context.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) == 0 }
}

/// Longest segment whose checksum is checked (three chunks: a 1,500-byte
/// MTU's worth); a longer one counts as corrupt here.
const CSUM_MAX: usize = 3 * CSUM_CHUNK;

/// The sum (in memory order) of `len` packet bytes from `offset`; None if
/// they are not all in the packet, or more than `CSUM_MAX`. The bytes are
/// copied to `buf` a chunk at a time: the helper then sums memory the
/// verifier knows the size of, whatever the length.
#[inline(always)]
fn packet_sum(ctx: &XdpContext, buf: &mut [u8; CSUM_CHUNK + 4], offset: usize, len: usize) -> Option<u64> {
    if len > CSUM_MAX {
        return None;
    }
    let mut sum = 0u64;
    for chunk in 0..CSUM_MAX / CSUM_CHUNK {
        let start = chunk * CSUM_CHUNK;
        if start >= len {
            break;
        }
        let n = opaque((len - start).min(CSUM_CHUNK));
        if n == 0 || n > CSUM_CHUNK {
            return None;
        }
        // SAFETY: n bytes into a buffer of CSUM_CHUNK + 4.
        let loaded = unsafe {
            bpf_xdp_load_bytes(
                ctx.ctx,
                (offset + start) as u32,
                buf.as_mut_ptr().cast(),
                n as u32,
            )
        };
        if loaded != 0 {
            return None;
        }
        // Zeros up to the next 32-bit boundary: the helper sums whole words,
        // and an odd last byte counts as its word's high byte.
        for pad in 0..3 {
            if let Some(byte) = buf.get_mut(n + pad) {
                *byte = 0;
            }
        }
        let padded = (n + 3) & !3;
        if padded > buf.len() {
            return None;
        }
        // SAFETY: sums `padded` bytes of `buf`, which holds them.
        let chunk_sum = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                buf.as_mut_ptr().cast(),
                padded as u32,
                0,
            )
        };
        if chunk_sum < 0 {
            return None;
        }
        // Chunks start at even offsets: their sums add up.
        sum += chunk_sum as u64;
    }
    Some(sum)
}

/// The sum of the `N` packet bytes at `offset`, summed where they lie: no
/// copy, for the headers of a segment without data (nearly every SYN and
/// cookie ACK).
#[inline(always)]
fn header_sum<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<u64> {
    let at = packet_at(ctx, offset, N)?;
    // SAFETY: N bytes inside the packet, checked on this pointer.
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, at as *mut u32, N as u32, 0) };
    (sum >= 0).then_some(sum as u64)
}

/// The sum of a header of `len` bytes (a multiple of 4, 20 to 60) at
/// `offset`: one call per length the verifier can check.
#[inline(always)]
fn sized_header_sum(ctx: &XdpContext, offset: usize, len: usize) -> Option<u64> {
    match len {
        20 => header_sum::<20>(ctx, offset),
        24 => header_sum::<24>(ctx, offset),
        28 => header_sum::<28>(ctx, offset),
        32 => header_sum::<32>(ctx, offset),
        36 => header_sum::<36>(ctx, offset),
        40 => header_sum::<40>(ctx, offset),
        44 => header_sum::<44>(ctx, offset),
        48 => header_sum::<48>(ctx, offset),
        52 => header_sum::<52>(ctx, offset),
        56 => header_sum::<56>(ctx, offset),
        60 => header_sum::<60>(ctx, offset),
        _ => None,
    }
}

/// Whether the IPv4 header checksum (for IPv4) and the TCP checksum of the
/// segment parsed into this CPU's scratch hold. (A BPF function of its own:
/// its locals stay out of the callers' frames.)
#[inline(never)]
fn checksums_hold(ctx: &XdpContext) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let scratch = unsafe { &mut *scratch };
    let (dissection, buf) = (&scratch.dissection, &mut scratch.csum);
    let segment = &dissection.segment;
    let tcp_offset = segment.tcp_offset as usize;
    if segment.family == Family::V4 {
        let l3 = dissection.l3_offset as usize;
        let header_len = tcp_offset.saturating_sub(l3);
        if !sized_header_sum(ctx, l3, header_len).is_some_and(ipv4_header_holds) {
            return false;
        }
    }
    let tcp_len = segment.tcp_header_len as usize + segment.payload_len as usize;
    let pseudo = pseudo_header(segment.family, &segment.src, &segment.dst, tcp_len as u32);
    // (Bounded, or the verifier does not follow a read at the offset.)
    if tcp_offset > MAX_TCP_OFFSET {
        return false;
    }
    let Some(check) = PacketBytes::new(ctx.data(), ctx.data_end()).read::<Be16>(tcp_offset + 16) else {
        return false;
    };
    let sum = if segment.payload_len == 0 {
        sized_header_sum(ctx, tcp_offset, tcp_len)
    } else {
        packet_sum(ctx, buf, tcp_offset, tcp_len)
    };
    sum.is_some_and(|sum| tcp_checksum_holds(pseudo, sum, check.0))
}

/// Answers the SYN just parsed (in this CPU's scratch) with a cookie
/// SYN-ACK: the frame is rewritten in place and sent back (XDP_TX).
#[inline(never)]
pub fn answer(ctx: &XdpContext, counters: &mut Counters, now: u64) -> u32 {
    // The kernel would drop a corrupt SYN: so must its stand-in.
    if !checksums_hold(ctx) {
        counters.bump(Counter::DropBadChecksum);
        return xdp_action::XDP_DROP;
    }
    match syn_ack(ctx, now) {
        Some(()) => {
            counters.bump(Counter::SynCookieSent);
            xdp_action::XDP_TX
        }
        None => {
            counters.bump(DropReason::CookieUnanswered.counter());
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn syn_ack(ctx: &XdpContext, now: u64) -> Option<()> {
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let scratch = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    let segment = &scratch.dissection.segment;
    let l3 = scratch.dissection.l3_offset as usize;
    let client = options::parse(&PacketBytes::new(ctx.data(), ctx.data_end()), segment);
    let header_len = segment.tcp_header_len as usize;
    let cookie = generate(ctx, segment.family, l3, segment.tcp_offset as usize, header_len)?;
    let len = fill_reply(&client, cookie, now);
    // The frame's length from a helper: the verifier allows no arithmetic
    // on the end-of-packet pointer.
    // SAFETY: a helper on this program's own context.
    let frame_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i64;
    // The reply is never longer than a SYN with the same options, except
    // for a SYN with timestamps and little else: then the frame grows before
    // the reply is written; otherwise it is cut after.
    let delta = (l3 + len) as i64 - frame_len;
    if delta > 0 && !adjust_tail(ctx, delta) {
        return None;
    }
    // The Ethernet header goes back where it came from; a VLAN tag stays.
    let eth = packet_at(ctx, 0, 12)? as *mut [u8; 6];
    // SAFETY: 12 bytes inside the packet; unaligned accesses.
    unsafe {
        let destination = eth.read_unaligned();
        eth.write_unaligned(eth.add(1).read_unaligned());
        eth.add(1).write_unaligned(destination);
    }
    // One fixed-size copy per reply length the verifier can check.
    match len {
        40 => copy_reply::<40>(ctx, l3, &scratch.reply)?,
        44 => copy_reply::<44>(ctx, l3, &scratch.reply)?,
        60 => copy_reply::<60>(ctx, l3, &scratch.reply)?,
        64 => copy_reply::<64>(ctx, l3, &scratch.reply)?,
        80 => copy_reply::<80>(ctx, l3, &scratch.reply)?,
        _ => return None,
    }
    (delta >= 0 || adjust_tail(ctx, delta)).then_some(())
}

/// The kernel's cookie for the SYN whose `header_len`-byte TCP header starts
/// at `tcp_offset`. The helper reads the whole header and the verifier must
/// know how much: one call per header length TCP allows.
#[inline(always)]
fn generate(
    ctx: &XdpContext,
    family: Family,
    l3: usize,
    tcp_offset: usize,
    header_len: usize,
) -> Option<u32> {
    let generated = match header_len {
        20 => generate_n::<20>(ctx, family, l3, tcp_offset),
        24 => generate_n::<24>(ctx, family, l3, tcp_offset),
        28 => generate_n::<28>(ctx, family, l3, tcp_offset),
        32 => generate_n::<32>(ctx, family, l3, tcp_offset),
        36 => generate_n::<36>(ctx, family, l3, tcp_offset),
        40 => generate_n::<40>(ctx, family, l3, tcp_offset),
        44 => generate_n::<44>(ctx, family, l3, tcp_offset),
        48 => generate_n::<48>(ctx, family, l3, tcp_offset),
        52 => generate_n::<52>(ctx, family, l3, tcp_offset),
        56 => generate_n::<56>(ctx, family, l3, tcp_offset),
        60 => generate_n::<60>(ctx, family, l3, tcp_offset),
        _ => None,
    }?;
    // The cookie in the low 32 bits (the MSS it encodes above); negative: an error.
    (generated >= 0).then_some(generated as u32)
}

#[inline(always)]
fn generate_n<const N: usize>(ctx: &XdpContext, family: Family, l3: usize, tcp_offset: usize) -> Option<i64> {
    let th = packet_at(ctx, tcp_offset, N)? as *mut tcphdr;
    // SAFETY: both headers lie inside the packet, checked on these pointers.
    unsafe {
        match family {
            Family::V4 => Some(bpf_tcp_raw_gen_syncookie_ipv4(
                packet_at(ctx, l3, IPV4_HDR_LEN)? as *mut iphdr,
                th,
                N as u32,
            )),
            Family::V6 => Some(bpf_tcp_raw_gen_syncookie_ipv6(
                packet_at(ctx, l3, IPV6_HDR_LEN)? as *mut ipv6hdr,
                th,
                N as u32,
            )),
        }
    }
}

/// Copies the first `N` bytes of `reply` to the packet at `l3`.
#[inline(always)]
fn copy_reply<const N: usize>(ctx: &XdpContext, l3: usize, reply: &ReplyBytes) -> Option<()> {
    let at = packet_at(ctx, l3, N)? as *mut u8;
    // SAFETY: N <= REPLY_MAX_LEN bytes, inside the packet (checked above).
    unsafe { core::ptr::copy_nonoverlapping(reply.0.as_ptr(), at, N.min(REPLY_MAX_LEN)) };
    Some(())
}

/// Writes the IP and TCP headers of the cookie SYN-ACK for the SYN in this
/// CPU's scratch to the scratch's reply buffer and returns their length (0
/// if there is no scratch). A BPF function of its own: the reply's fields
/// stay out of the caller's frame.
#[inline(never)]
fn fill_reply(client: &TcpOptions, cookie: u32, now: u64) -> usize {
    let (Some(scratch), Some(config)) = (SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let scratch = unsafe { &mut *scratch };
    reply(
        &scratch.dissection.segment,
        client,
        cookie,
        now,
        config,
        &mut scratch.syn_ack,
    );
    build_syn_ack(&scratch.syn_ack, &mut scratch.reply)
}

/// The cookie SYN-ACK for `segment`'s SYN: what the client offered, within
/// what the listener will accept when it checks the cookie.
#[inline(always)]
fn reply(
    segment: &TcpSegment,
    client: &TcpOptions,
    cookie: u32,
    now: u64,
    config: &GuardConfig,
    out: &mut SynAck,
) {
    let allows = |option: u8| config.cookie_options & option != 0;
    // A SYN without options gets a SYN-ACK without options.
    let bare = segment.tcp_header_len as usize <= TCP_HDR_LEN;
    // Window scale and SACK ride in the timestamp: without one, neither.
    let client_tsval = client
        .timestamp()
        .filter(|_| allows(GuardConfig::COOKIE_TIMESTAMPS))
        .map(|(tsval, _)| tsval);
    let client_wscale = client_tsval
        .and(client.window_scale())
        .filter(|_| allows(GuardConfig::COOKIE_WSCALE));
    let sack = client_tsval.is_some() && client.sack_permitted() && allows(GuardConfig::COOKIE_SACK);
    let now_ms = (now / 1_000_000) as u32;
    *out = SynAck {
        family: segment.family,
        src: segment.dst,
        dst: segment.src,
        src_port: segment.dst_port,
        dst_port: segment.src_port,
        seq: cookie,
        ack: segment.seq.wrapping_add(1),
        mss: (!bare).then_some(match segment.family {
            Family::V4 => config.cookie_mss_v4,
            Family::V6 => config.cookie_mss_v6,
        }),
        wscale: client_wscale.map(|_| config.cookie_wscale),
        sack,
        timestamp: client_tsval.map(|tsval| (cookie_tsval(now_ms, client_wscale, sack), tsval)),
    };
}

/// Checks the cookie of an ACK for no known flow (syncookie policy). A
/// valid one opens the flow as ESTABLISHED, verifies its source and goes to
/// the listener, which accepts the same cookie. An invalid one is dropped
/// in attack mode when it carries no data (a forged ACK; the listener would
/// only answer it with a reset), and passed otherwise (it may belong to a
/// connection older than the guard).
#[inline(never)]
pub fn check_ack(ctx: &XdpContext, counters: &mut Counters, now: u64) -> u32 {
    let (Some(scratch), Some(config)) = (SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let scratch = unsafe { &mut *scratch };
    let segment = &scratch.dissection.segment;
    let l3 = scratch.dissection.l3_offset as usize;
    let Some(th) = packet_at(ctx, segment.tcp_offset as usize, TCP_HDR_LEN) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: both headers lie inside the packet.
    let checked = unsafe {
        match segment.family {
            Family::V4 => packet_at(ctx, l3, IPV4_HDR_LEN)
                .map(|iph| bpf_tcp_raw_check_syncookie_ipv4(iph as *mut iphdr, th as *mut tcphdr)),
            Family::V6 => packet_at(ctx, l3, IPV6_HDR_LEN)
                .map(|iph| bpf_tcp_raw_check_syncookie_ipv6(iph as *mut ipv6hdr, th as *mut tcphdr)),
        }
    };
    if checked == Some(0) {
        // A corrupt ACK with a valid cookie: the listener drops it, so the
        // flow must not open here either.
        if !checksums_hold(ctx) {
            counters.bump(Counter::DropBadChecksum);
            return xdp_action::XDP_DROP;
        }
        counters.bump(Counter::CookieAckValid);
        scratch.key = FlowKey::new(segment, Direction::Ingress);
        let seg = Seg::new(segment, Direction::Ingress, None);
        let _established = cookie_established(&seg, config.cookie_wscale, now, &mut scratch.flow);
        scratch.flow.generation = fresh_generation();
        // (By reference: the map copies from the scratch, not from the stack.)
        let (key, flow) = (&scratch.key, &scratch.flow);
        // Only if absent: a flow another CPU created meanwhile (one that
        // may hold half-open counts) is not overwritten.
        match FLOWS.insert(key, flow, BPF_NOEXIST as u64) {
            Ok(()) => counters.bump(Counter::ToEstablished),
            Err(error) if error == -EEXIST => counters.bump(Counter::FlowBusy),
            Err(_) => counters.bump(Counter::FlowTableFull),
        }
        guard::verify(&scratch.key);
        return xdp_action::XDP_PASS;
    }
    counters.bump(Counter::InvalidNoFlow);
    if segment.payload_len == 0 && guard::attack_active(now) {
        counters.bump(DropReason::BadCookie.counter());
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}
