//! SYN cookies answered from XDP (the syncookie policy): the SYN-ACK the
//! fast path sends back, and the options it carries.
//!
//! The cookie itself (the SYN-ACK's sequence number) comes from the kernel's
//! `bpf_tcp_raw_gen_syncookie_ipv4/6` helpers, made with the kernel's own
//! secret, so the listener's ordinary cookie check accepts the client's ACK.
//! A cookie holds the MSS only; window scale and SACK travel in the low bits
//! of the timestamp value, as the kernel's own cookies carry them
//! (`cookie_init_timestamp`), and the kernel decodes them from the client's
//! echo (`cookie_timestamp_decode`).

use crate::packet::Family;

/// Low bits of a cookie timestamp holding the client's window scale; all
/// ones: the client offered none.
pub const TS_OPT_WSCALE_MASK: u32 = 0x0f;
/// The client offered SACK.
pub const TS_OPT_SACK: u32 = 1 << 4;
/// Bits of the timestamp value given to options.
const TSBITS: u32 = 6;
/// RFC 7323's largest window scale (the kernel clamps larger ones to it).
const MAX_WSCALE: u8 = 14;

/// The timestamp value of a cookie SYN-ACK sent at `now_ms` (the kernel's
/// TCP clock: CLOCK_MONOTONIC in ms), carrying the client's window scale and
/// SACK: the kernel's `cookie_init_timestamp`. Never later than `now_ms`, so
/// the listener's own timestamps that follow stay monotonic.
pub const fn cookie_tsval(now_ms: u32, client_wscale: Option<u8>, sack: bool) -> u32 {
    let mut options = match client_wscale {
        Some(scale) if scale > MAX_WSCALE => MAX_WSCALE as u32,
        Some(scale) => scale as u32,
        None => TS_OPT_WSCALE_MASK,
    };
    if sack {
        options |= TS_OPT_SACK;
    }
    let ts = ((now_ms >> TSBITS) << TSBITS) | options;
    if ts > now_ms {
        ts.wrapping_sub(1 << TSBITS)
    } else {
        ts
    }
}

/// What the listener reads back from an echoed cookie timestamp: the
/// client's window scale (if any) and SACK (`cookie_timestamp_decode`).
pub const fn cookie_ts_decode(tsecr: u32) -> (Option<u8>, bool) {
    let scale = tsecr & TS_OPT_WSCALE_MASK;
    let wscale = if scale == TS_OPT_WSCALE_MASK {
        None
    } else {
        Some(scale as u8)
    };
    (wscale, tsecr & TS_OPT_SACK != 0)
}

/// The window a cookie SYN-ACK advertises (unscaled, as in any SYN-ACK):
/// what Linux offers with a 1460-byte MSS (44 segments).
pub const SYN_ACK_WINDOW: u16 = 64_240;

/// RFC 9293's default MSS, offered with timestamps if no MSS is set.
const DEFAULT_MSS: u16 = 536;

/// Hop limit of a cookie SYN-ACK (Linux's default TTL).
const HOP_LIMIT: u8 = 64;

/// The IP and TCP headers of a cookie SYN-ACK fit in this many bytes (an
/// IPv6 header and a TCP header with 20 bytes of options).
pub const REPLY_MAX_LEN: usize = 80;

/// TCP header length of a SYN-ACK with timestamps (MSS, SACK-permitted or
/// two NOPs, timestamps, NOP and window scale or four NOPs).
const TCP_LEN_WITH_TIMESTAMP: usize = 40;
/// TCP header length of a SYN-ACK with the MSS option alone: without a
/// timestamp the cookie cannot carry window scale or SACK, so neither is offered.
const TCP_LEN_MSS_ONLY: usize = 24;
/// TCP header length of a SYN-ACK without options (answering a SYN without any).
const TCP_LEN_BARE: usize = 20;

/// What a cookie SYN-ACK says, from the host to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    pub family: Family,
    /// The host's address (the SYN's destination), as in `TcpSegment`.
    pub src: [u8; 16],
    /// The client's address.
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// The cookie.
    pub seq: u32,
    /// The client's ISN + 1.
    pub ack: u32,
    /// None: no options at all (the SYN had none either; the peer then
    /// assumes 536), so the answer is never longer than the question.
    pub mss: Option<u16>,
    /// The host's window scale, offered when the client offered one.
    pub wscale: Option<u8>,
    pub sack: bool,
    /// (TSval, TSecr), when the client sent timestamps and they may be used.
    pub timestamp: Option<(u32, u32)>,
}

/// Room for a cookie SYN-ACK's IP and TCP headers, 8-byte aligned: on BPF
/// it is then zeroed a word at a time (unaligned, the compiler calls a
/// byte-by-byte memset), and its headers summed a 32-bit word at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyBytes(pub [u8; REPLY_MAX_LEN]);

impl ReplyBytes {
    /// Zeroes it with ten 64-bit stores. (Volatile: the compiler would
    /// turn a plain loop or `[0; N]` into a call of BPF's byte-by-byte
    /// memset, even at this alignment.)
    #[inline(always)]
    fn clear(&mut self) {
        const _: () = assert!(REPLY_MAX_LEN.is_multiple_of(8));
        let words = (self as *mut ReplyBytes).cast::<u64>();
        for i in 0..REPLY_MAX_LEN / 8 {
            // SAFETY: inside `self`, 8-byte aligned (repr align(8)).
            unsafe { words.add(i).write_volatile(0) };
        }
    }
}

/// Writes the IP and TCP headers of `reply` to the start of `out`, with
/// their checksums, and returns their length. Bytes past it are zero.
#[inline(always)]
pub fn build_syn_ack(reply: &SynAck, out: &mut ReplyBytes) -> usize {
    out.clear();
    let out = &mut out.0;
    let tcp_len = match (reply.timestamp, reply.mss) {
        (Some(_), _) => TCP_LEN_WITH_TIMESTAMP,
        (None, Some(_)) => TCP_LEN_MSS_ONLY,
        (None, None) => TCP_LEN_BARE,
    };
    let (ip_len, pseudo) = match reply.family {
        Family::V4 => {
            let ip = &mut out[..20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
            // Don't fragment, as Linux sends its SYN-ACKs.
            ip[6] = 0x40;
            ip[8] = HOP_LIMIT;
            ip[9] = crate::packet::IPPROTO_TCP;
            ip[12..16].copy_from_slice(&reply.src[..4]);
            ip[16..20].copy_from_slice(&reply.dst[..4]);
            let check = fold(sum_words(ip, 0));
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            let pseudo = sum_words(&reply.src[..4], 0)
                + sum_words(&reply.dst[..4], 0)
                + crate::packet::IPPROTO_TCP as u32
                + tcp_len as u32;
            (20, pseudo)
        }
        Family::V6 => {
            let ip = &mut out[..40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            ip[6] = crate::packet::IPPROTO_TCP;
            ip[7] = HOP_LIMIT;
            ip[8..24].copy_from_slice(&reply.src);
            ip[24..40].copy_from_slice(&reply.dst);
            let pseudo = sum_words(&reply.src, 0)
                + sum_words(&reply.dst, 0)
                + crate::packet::IPPROTO_TCP as u32
                + tcp_len as u32;
            (40, pseudo)
        }
    };
    let tcp = if ip_len == 20 {
        &mut out[20..60]
    } else {
        &mut out[40..80]
    };
    tcp[0..2].copy_from_slice(&reply.src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&reply.dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&reply.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&reply.ack.to_be_bytes());
    tcp[12] = ((tcp_len / 4) as u8) << 4;
    tcp[13] = crate::packet::TcpFlags::SYN | crate::packet::TcpFlags::ACK;
    tcp[14..16].copy_from_slice(&SYN_ACK_WINDOW.to_be_bytes());
    if tcp_len > TCP_LEN_BARE {
        let mss = reply.mss.unwrap_or(DEFAULT_MSS);
        tcp[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
    }
    if let Some((tsval, tsecr)) = reply.timestamp {
        tcp[24..26].copy_from_slice(&if reply.sack { [4, 2] } else { [1, 1] });
        tcp[26..28].copy_from_slice(&[8, 10]);
        tcp[28..32].copy_from_slice(&tsval.to_be_bytes());
        tcp[32..36].copy_from_slice(&tsecr.to_be_bytes());
        tcp[36..40].copy_from_slice(&match reply.wscale {
            Some(scale) => [1, 3, 3, scale],
            None => [1, 1, 1, 1],
        });
    }
    let check = fold(sum_words(tcp, pseudo));
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    ip_len + tcp_len
}

/// `sum` plus the big-endian 16-bit words of `bytes` (a length that is a
/// multiple of 4), added as 32-bit words: the one's complement sum is the
/// same once folded (see `fold`), with half the additions.
#[inline(always)]
fn sum_words(bytes: &[u8], sum: u32) -> u32 {
    debug_assert!(bytes.len().is_multiple_of(4), "a tail would be left out");
    let mut wide = sum as u64;
    for word in bytes.chunks_exact(4) {
        wide += u32::from_be_bytes([word[0], word[1], word[2], word[3]]) as u64;
    }
    // Into 17 bits at most, which `fold` takes.
    wide = (wide & 0xffff_ffff) + (wide >> 32);
    wide = (wide & 0xffff) + (wide >> 16);
    wide = (wide & 0xffff) + (wide >> 16);
    wide as u32
}

/// The Internet checksum of a one's-complement sum.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{self, Outcome, TcpClass};

    fn reply(family: Family, timestamp: Option<(u32, u32)>) -> SynAck {
        let (src, dst) = match family {
            Family::V4 => {
                let mut src = [0; 16];
                let mut dst = [0; 16];
                src[..4].copy_from_slice(&[198, 18, 0, 1]);
                dst[..4].copy_from_slice(&[198, 19, 0, 2]);
                (src, dst)
            }
            Family::V6 => {
                let mut src = [0; 16];
                src[..4].copy_from_slice(&[0x20, 0x01, 0x02, 0x00]);
                src[15] = 1;
                let mut dst = src;
                dst[15] = 2;
                (src, dst)
            }
        };
        SynAck {
            family,
            src,
            dst,
            src_port: 8080,
            dst_port: 40_000,
            seq: 0xdead_beef,
            ack: 1001,
            mss: Some(1460),
            wscale: Some(7),
            sack: true,
            timestamp,
        }
    }

    /// The frame `reply` makes behind an Ethernet header.
    fn frame(reply: &SynAck) -> Vec<u8> {
        let mut out = ReplyBytes([0; REPLY_MAX_LEN]);
        let len = build_syn_ack(reply, &mut out);
        let out = out.0;
        let ether_type: u16 = match reply.family {
            Family::V4 => 0x0800,
            Family::V6 => 0x86dd,
        };
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ether_type.to_be_bytes());
        frame.extend_from_slice(&out[..len]);
        frame
    }

    /// The one's-complement sum over a TCP segment and its pseudo-header,
    /// as a receiver checks it: 0xffff when the checksum is right.
    fn receiver_sum(family: Family, ip: &[u8], tcp: &[u8]) -> u16 {
        let mut sum = match family {
            Family::V4 => sum_words(&ip[12..20], 0),
            Family::V6 => sum_words(&ip[8..40], 0),
        };
        sum += 6 + tcp.len() as u32;
        !fold(sum_words(tcp, sum))
    }

    #[test]
    fn syn_acks_parse_as_syn_acks_with_the_cookie_and_valid_checksums() {
        for family in [Family::V4, Family::V6] {
            for timestamp in [None, Some((0x1234_5640, 77))] {
                let reply = reply(family, timestamp);
                let frame = frame(&reply);
                let d = packet::parse(&frame[..]);
                assert_eq!(d.outcome, Outcome::Tcp, "{family:?} {timestamp:?}");
                let seg = d.segment;
                assert_eq!(seg.flags.class(), TcpClass::SynAck);
                assert_eq!((seg.seq, seg.ack), (0xdead_beef, 1001));
                assert_eq!((seg.src_port, seg.dst_port), (8080, 40_000));
                assert_eq!((seg.src, seg.dst), (reply.src, reply.dst));
                assert_eq!(seg.payload_len, 0);
                let options = packet::parse_tcp_options(&frame[..], &seg);
                assert!(!options.malformed);
                assert_eq!(options.mss(), Some(1460));
                assert_eq!(options.timestamp(), timestamp);
                // Without a timestamp to carry them, neither is offered.
                assert_eq!(options.window_scale(), timestamp.map(|_| 7));
                assert_eq!(options.sack_permitted(), timestamp.is_some());
                let l3 = 14;
                let tcp_start = seg.tcp_offset as usize;
                let ip = &frame[l3..tcp_start];
                if family == Family::V4 {
                    assert_eq!(!fold(sum_words(ip, 0)), 0xffff, "IPv4 header checksum");
                }
                assert_eq!(
                    receiver_sum(family, ip, &frame[tcp_start..]),
                    0xffff,
                    "TCP checksum, {family:?} {timestamp:?}"
                );
            }
        }
    }

    #[test]
    fn a_syn_ack_without_options_is_a_bare_header() {
        let bare = SynAck {
            mss: None,
            timestamp: None,
            ..reply(Family::V4, None)
        };
        let frame = frame(&bare);
        let d = packet::parse(&frame[..]);
        assert_eq!(d.segment.tcp_header_len, 20);
        assert_eq!(receiver_sum(Family::V4, &frame[14..34], &frame[34..]), 0xffff);
    }

    #[test]
    fn cookie_timestamps_round_trip_the_options_and_never_run_ahead() {
        for now_ms in [0u32, 63, 64, 1_000, 123_456_789, u32::MAX] {
            for wscale in [None, Some(0), Some(7), Some(14), Some(15), Some(255)] {
                for sack in [false, true] {
                    let ts = cookie_tsval(now_ms, wscale, sack);
                    let expected = wscale.map(|s| s.min(14));
                    assert_eq!(
                        cookie_ts_decode(ts),
                        (expected, sack),
                        "{now_ms} {wscale:?} {sack}"
                    );
                    // Within one 64 ms step before now (wrapping at 2^32).
                    assert!(now_ms.wrapping_sub(ts) < 64, "{now_ms} -> {ts}");
                }
            }
        }
    }
}
