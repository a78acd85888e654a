//! The shared parser, run in userspace on crafted, truncated and random frames.
//! (The same code runs in the XDP program; see prog_test_run.rs for that side.)

use std::net::IpAddr;

use proptest::prelude::*;
use tcp_guard_common::packet::{
    self, ByteView, Dissection, Family, Header, IP_MAX_LEN, Malformed, Outcome, TcpClass, TcpFlags,
    TcpSegment, parse, parse_tcp_options, walk_tcp_options,
};
use tcp_guard_tests::packets::{
    ACK, FIN, PSH, RST, SYN, TcpPacket, ethernet, linux_syn_options, qinq, with_ipv6_extension,
};

fn v4() -> (IpAddr, IpAddr) {
    ("198.19.7.9".parse().unwrap(), "198.18.0.1".parse().unwrap())
}

fn v6() -> (IpAddr, IpAddr) {
    ("2001:2::2".parse().unwrap(), "2001:2::1".parse().unwrap())
}

fn segment(frame: &[u8]) -> TcpSegment {
    let d = parse(frame);
    *d.tcp()
        .unwrap_or_else(|| panic!("expected TCP, got {:?}", d.outcome))
}

fn outcome(frame: &[u8]) -> Outcome {
    parse(frame).outcome
}

#[test]
fn ipv4_syn_is_parsed_field_by_field() {
    let (src, dst) = v4();
    let mut pkt = TcpPacket::new(src, dst, 40000, 80, SYN);
    pkt.seq = 0xdead_beef;
    pkt.tcp_options = linux_syn_options(1460, 7, 7);
    let frame = pkt.frame();
    let d = parse(frame.as_slice());
    assert_eq!(d.family, Some(Family::V4));
    assert!(!d.vlan);
    let seg = segment(&frame);
    assert_eq!(seg.src[..4], [198, 19, 7, 9]);
    assert_eq!(seg.dst[..4], [198, 18, 0, 1]);
    assert_eq!(seg.src[4..], [0; 12]);
    assert_eq!((seg.src_port, seg.dst_port), (40000, 80));
    assert_eq!(seg.seq, 0xdead_beef);
    assert_eq!(seg.flags.class(), TcpClass::Syn);
    assert_eq!(seg.tcp_offset, 34);
    assert_eq!(seg.tcp_header_len, 40);
    assert_eq!(seg.payload_len, 0);
    let opts = parse_tcp_options(frame.as_slice(), &seg);
    assert_eq!(opts.mss(), Some(1460));
    assert_eq!(opts.window_scale(), Some(7));
    assert!(opts.sack_permitted());
    assert_eq!(opts.timestamp(), Some((7, 0)));
    assert!(!opts.malformed);
}

#[test]
fn ipv6_data_segment_counts_its_payload() {
    let (src, dst) = v6();
    let mut pkt = TcpPacket::new(src, dst, 40000, 443, PSH | ACK);
    pkt.payload = b"hello".to_vec();
    let seg = segment(&pkt.frame());
    assert_eq!(seg.family, Family::V6);
    assert_eq!(
        seg.src,
        "2001:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(seg.tcp_offset, 54);
    assert_eq!(seg.payload_len, 5);
    assert_eq!(seg.flags.class(), TcpClass::Ack);
}

#[test]
fn vlan_tag_is_skipped() {
    let (src, dst) = v4();
    let mut pkt = TcpPacket::new(src, dst, 1, 2, SYN);
    pkt.vlan = Some(42);
    let frame = pkt.frame();
    let d: Dissection = parse(frame.as_slice());
    assert!(d.vlan);
    assert_eq!(segment(&frame).tcp_offset, 38);
}

#[test]
fn stacked_vlan_tags_are_walked() {
    // QinQ: an 802.1ad outer tag, then an 802.1Q inner one.
    let (src, dst) = v4();
    let frame = qinq(&TcpPacket::new(src, dst, 1, 2, SYN).frame(), 3, 7);
    let d = parse(frame.as_slice());
    assert!(d.vlan);
    assert_eq!(d.l3_offset, 22);
    assert_eq!(segment(&frame).tcp_offset, 42);
    assert_eq!(segment(&frame).flags.class(), TcpClass::Syn);
    // A third tag is more than any link here carries: not IP.
    let mut three = frame[..12].to_vec();
    three.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
    three.extend_from_slice(&frame[12..]);
    let d = parse(three.as_slice());
    assert_eq!(d.outcome, Outcome::NonIp);
    assert_eq!(d.family, None);
}

#[test]
fn tcp_the_parser_cannot_see_whole_is_marked_with_its_source() {
    let (src4, dst4) = v4();
    let mut fragment = TcpPacket::new(src4, dst4, 1, 2, SYN).ip_packet();
    fragment[6] = 0x20; // more fragments
    let d = parse(ethernet(0x0800, None, &fragment).as_slice());
    assert_eq!(d.outcome, Outcome::Ipv4Fragment);
    assert!(d.unparsed_tcp);
    assert_eq!(&d.segment.src[..4], &[198, 19, 7, 9]);
    let mut udp_fragment = fragment.clone();
    udp_fragment[9] = 17;
    let d = parse(ethernet(0x0800, None, &udp_fragment).as_slice());
    assert_eq!(d.outcome, Outcome::Ipv4Fragment);
    assert!(!d.unparsed_tcp, "a UDP fragment is not TCP");

    let (src6, dst6) = v6();
    let ip = TcpPacket::new(src6, dst6, 1, 2, SYN).ip_packet();
    for kind in [0, 60, 44] {
        let d = parse(ethernet(0x86dd, None, &with_ipv6_extension(&ip, kind)).as_slice());
        assert_eq!(d.outcome, Outcome::Ipv6Extension, "extension header {kind}");
        assert!(d.unparsed_tcp, "TCP behind extension header {kind}");
        assert_eq!(d.segment.family, Family::V6);
        assert_eq!(IpAddr::from(d.segment.src), src6);
    }
    // Hop-by-hop before ICMPv6 (MLD does this): not TCP.
    let mut icmp = ip.clone();
    icmp[6] = 58;
    let d = parse(ethernet(0x86dd, None, &with_ipv6_extension(&icmp, 0)).as_slice());
    assert_eq!(d.outcome, Outcome::Ipv6Extension);
    assert!(!d.unparsed_tcp, "ICMPv6 behind hop-by-hop is not TCP");
    // A chain cut short may hide TCP: treated as TCP.
    let cut = with_ipv6_extension(&ip, 0);
    let mut chained = cut[..48].to_vec();
    chained[40] = 60;
    chained[4..6].copy_from_slice(&8u16.to_be_bytes());
    let d = parse(ethernet(0x86dd, None, &chained).as_slice());
    assert!(d.unparsed_tcp, "a chain the walk cannot finish");
}

#[test]
fn ipv4_options_move_the_tcp_header() {
    let (src, dst) = v4();
    let mut pkt = TcpPacket::new(src, dst, 1, 2, SYN);
    pkt.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    assert_eq!(segment(&pkt.frame()).tcp_offset, 38);
}

#[test]
fn ethernet_padding_is_not_payload() {
    let (src, dst) = v4();
    let mut frame = TcpPacket::new(src, dst, 1, 2, ACK).frame();
    frame.resize(60, 0); // minimum Ethernet frame
    assert_eq!(segment(&frame).payload_len, 0);
}

#[test]
fn flags_classify_as_tcp_stacks_send_them() {
    let cases = [
        (SYN, TcpClass::Syn),
        (SYN | ACK, TcpClass::SynAck),
        (ACK, TcpClass::Ack),
        (PSH | ACK, TcpClass::Ack),
        (FIN | ACK, TcpClass::Fin),
        (FIN | PSH | ACK, TcpClass::Fin),
        (RST, TcpClass::Rst),
        (RST | ACK, TcpClass::Rst),
        (0, TcpClass::Other),
        (FIN, TcpClass::Other),
        (SYN | FIN, TcpClass::Other),
        (SYN | RST, TcpClass::Other),
        (SYN | FIN | RST | PSH | ACK | 0x20, TcpClass::Other),
    ];
    for (flags, class) in cases {
        assert_eq!(TcpFlags(flags).class(), class, "flags {flags:#04x}");
    }
}

#[test]
fn non_ip_non_tcp_fragments_and_extension_headers() {
    assert_eq!(outcome(&ethernet(0x0806, None, &[0; 28])), Outcome::NonIp);
    let (src, dst) = v4();
    let mut udp = TcpPacket::new(src, dst, 1, 2, SYN).ip_packet();
    udp[9] = 17;
    assert_eq!(outcome(&ethernet(0x0800, None, &udp)), Outcome::NonTcp);
    let mut fragment = TcpPacket::new(src, dst, 1, 2, SYN).ip_packet();
    fragment[6] = 0x20; // more fragments
    assert_eq!(outcome(&ethernet(0x0800, None, &fragment)), Outcome::Ipv4Fragment);
    let mut later = TcpPacket::new(src, dst, 1, 2, SYN).ip_packet();
    later[6..8].copy_from_slice(&[0, 10]); // offset 80 bytes
    assert_eq!(outcome(&ethernet(0x0800, None, &later)), Outcome::Ipv4Fragment);
    let (src6, dst6) = v6();
    let mut hop_by_hop = TcpPacket::new(src6, dst6, 1, 2, SYN).ip_packet();
    hop_by_hop[6] = 0;
    assert_eq!(
        outcome(&ethernet(0x86dd, None, &hop_by_hop)),
        Outcome::Ipv6Extension
    );
    let mut icmp6 = TcpPacket::new(src6, dst6, 1, 2, SYN).ip_packet();
    icmp6[6] = 58;
    assert_eq!(outcome(&ethernet(0x86dd, None, &icmp6)), Outcome::NonTcp);
}

#[test]
fn each_malformation_has_its_reason() {
    let (src, dst) = v4();
    let good4 = TcpPacket::new(src, dst, 1, 2, SYN).ip_packet();
    let (src6, dst6) = v6();
    let good6 = TcpPacket::new(src6, dst6, 1, 2, SYN).ip_packet();
    let with = |ip: &[u8], at: usize, byte: u8| {
        let mut ip = ip.to_vec();
        ip[at] = byte;
        ip
    };
    let cases: Vec<(Vec<u8>, Malformed)> = vec![
        (vec![0; 13], Malformed::EthernetTruncated),
        (ethernet(0x8100, None, &[0, 1]), Malformed::VlanTruncated),
        (ethernet(0x0800, None, &good4[..19]), Malformed::Ipv4Truncated),
        (
            ethernet(0x0800, None, &with(&good4, 0, 0x65)),
            Malformed::Ipv4BadVersion,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 0, 0x44)),
            Malformed::Ipv4BadHeaderLength,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 0, 0x4f)),
            Malformed::Ipv4BadHeaderLength,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 3, 10)),
            Malformed::Ipv4BadTotalLength,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 3, 200)),
            Malformed::Ipv4BadTotalLength,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 3, 30)),
            Malformed::TcpTruncated,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 32, 0x40)),
            Malformed::TcpBadDataOffset,
        ),
        (
            ethernet(0x0800, None, &with(&good4, 32, 0x60)),
            Malformed::TcpBadDataOffset,
        ),
        (ethernet(0x86dd, None, &good6[..39]), Malformed::Ipv6Truncated),
        (
            ethernet(0x86dd, None, &with(&good6, 0, 0x40)),
            Malformed::Ipv6BadVersion,
        ),
        (
            ethernet(0x86dd, None, &with(&good6, 5, 200)),
            Malformed::Ipv6BadPayloadLength,
        ),
        (
            ethernet(0x86dd, None, &with(&good6, 5, 8)),
            Malformed::TcpTruncated,
        ),
    ];
    for (frame, reason) in cases {
        assert_eq!(outcome(&frame), Outcome::Malformed(reason), "{frame:02x?}");
    }
}

#[test]
fn bad_option_lengths_are_flagged_not_read_past() {
    let (src, dst) = v4();
    let mut pkt = TcpPacket::new(src, dst, 1, 2, SYN);
    pkt.tcp_options = vec![2, 4, 5, 0xb4, 3, 9, 1, 1]; // good MSS, then a length past the end
    let frame = pkt.frame();
    let opts = parse_tcp_options(frame.as_slice(), &segment(&frame));
    assert_eq!(opts.mss(), Some(0x5b4));
    assert!(opts.malformed);
    pkt.tcp_options = vec![2, 0, 0, 0]; // length 0 would loop forever if trusted
    let frame = pkt.frame();
    assert!(parse_tcp_options(frame.as_slice(), &segment(&frame)).malformed);
}

/// A socket buffer as the TC program sees one: its length may exceed what
/// an IP length field holds (BIG TCP).
struct Skb<'a>(&'a [u8]);

impl ByteView for Skb<'_> {
    fn read<T: Header>(&self, offset: usize) -> Option<T> {
        ByteView::read(self.0, offset)
    }

    fn contains(&self, offset: usize, len: usize) -> bool {
        ByteView::contains(self.0, offset, len)
    }

    fn big_len(&self, offset: usize) -> Option<usize> {
        self.0
            .len()
            .checked_sub(offset)
            .filter(|&len| len > packet::IP_MAX_LEN)
    }
}

/// A segment from 8080 to 40000 with `payload` bytes, its IP length field 0.
fn big(v6: bool, payload: usize) -> Vec<u8> {
    let (src, dst) = if v6 { self::v6() } else { v4() };
    let mut pkt = TcpPacket::new(src, dst, 8080, 40000, ACK);
    pkt.payload = vec![0x5a; payload];
    let mut frame = pkt.frame();
    frame[if v6 { 18..20 } else { 16..18 }].fill(0);
    frame
}

/// `frame` (IPv6, TCP at 54) as Linux before 7.0 sends it past 64 KiB: next
/// header 0, then a hop-by-hop header with TCP next, length 0, and the
/// jumbo option (0xc2, 4) with the length past the IPv6 header.
fn with_jumbo_header(frame: &[u8]) -> Vec<u8> {
    let mut jumbo = frame[..54].to_vec();
    jumbo[20] = 0;
    jumbo.extend_from_slice(&[6, 0, 0xc2, 4]);
    jumbo.extend_from_slice(&((frame.len() - 54 + 8) as u32).to_be_bytes());
    jumbo.extend_from_slice(&frame[54..]);
    jumbo
}

/// BIG TCP: in a socket buffer, a segment longer than an IP length field
/// can say is parsed at the buffer's length: IPv4 with a total length of 0,
/// IPv6 with a payload length of 0, with (Linux before 7.0) or without a
/// jumbo hop-by-hop header. On the wire (the XDP program's view) the same
/// frames stay what they were, and so does anything short of BIG TCP.
#[test]
fn big_tcp_is_parsed_at_the_socket_buffers_length() {
    const PAYLOAD: usize = 100_000;
    let (v4_frame, v6_frame) = (big(false, PAYLOAD), big(true, PAYLOAD));
    let jumbo = with_jumbo_header(&v6_frame);
    for (name, frame, tcp_offset, on_the_wire) in [
        (
            "IPv4",
            &v4_frame,
            34,
            Outcome::Malformed(Malformed::Ipv4BadTotalLength),
        ),
        ("IPv6", &v6_frame, 54, Outcome::Malformed(Malformed::TcpTruncated)),
        ("IPv6 jumbo", &jumbo, 62, Outcome::Ipv6Extension),
    ] {
        let d = parse(&Skb(frame));
        let seg = d
            .tcp()
            .unwrap_or_else(|| panic!("{name}: expected TCP, got {:?}", d.outcome));
        assert_eq!(seg.payload_len as usize, PAYLOAD, "{name}");
        assert_eq!(seg.tcp_offset, tcp_offset, "{name}");
        assert_eq!((seg.src_port, seg.dst_port), (8080, 40000), "{name}");
        assert!(d.big_tcp(), "{name}");
        assert_eq!(outcome(frame), on_the_wire, "{name} on the wire");
    }

    // One byte short of BIG TCP: a length field of 0 is malformed.
    let ipv4_at_most = IP_MAX_LEN - 40;
    assert_eq!(
        parse(&Skb(&big(false, ipv4_at_most))).outcome,
        Outcome::Malformed(Malformed::Ipv4BadTotalLength)
    );
    assert!(parse(&Skb(&big(false, ipv4_at_most + 1))).big_tcp());
    let ipv6_at_most = IP_MAX_LEN - 20;
    assert_eq!(
        parse(&Skb(&big(true, ipv6_at_most))).outcome,
        Outcome::Malformed(Malformed::TcpTruncated)
    );
    assert!(parse(&Skb(&big(true, ipv6_at_most + 1))).big_tcp());
    // Segments that fill their length fields are not BIG TCP.
    for v6 in [false, true] {
        let (src, dst) = if v6 { self::v6() } else { v4() };
        let mut pkt = TcpPacket::new(src, dst, 8080, 40000, ACK);
        pkt.payload = vec![0x5a; if v6 { ipv6_at_most } else { ipv4_at_most }];
        let frame = pkt.frame();
        let d = parse(&Skb(&frame));
        assert!(d.tcp().is_some() && !d.big_tcp(), "IPv6: {v6}");
    }

    // A hop-by-hop header that is not the jumbo one goes the extension
    // headers' way: TCP behind it is unparsed, anything else is not TCP.
    let mut wrong_length = jumbo.clone();
    wrong_length[61] ^= 1;
    let mut longer = jumbo.clone();
    longer[55] = 1;
    let mut other_option = jumbo.clone();
    other_option[56] = 0xc3;
    for (name, frame) in [
        ("wrong length", &wrong_length),
        ("longer", &longer),
        ("other option", &other_option),
    ] {
        let d = parse(&Skb(frame));
        assert_eq!(d.outcome, Outcome::Ipv6Extension, "{name}");
        assert!(d.unparsed_tcp, "{name}");
    }
    let mut udp_next = jumbo.clone();
    udp_next[54] = 17;
    let d = parse(&Skb(&udp_next));
    assert_eq!(d.outcome, Outcome::Ipv6Extension);
    assert!(!d.unparsed_tcp, "UDP behind the hop-by-hop header is not TCP");
}

/// Invariants every parse result must satisfy, whatever the input.
fn check_consistent(frame: &[u8]) {
    let d = parse(frame);
    if let Some(seg) = d.tcp() {
        let end = seg.tcp_offset as usize + seg.tcp_header_len as usize + seg.payload_len as usize;
        assert!(end <= frame.len(), "TCP segment runs past the frame");
        assert!((20..=60).contains(&seg.tcp_header_len));
        let opts = parse_tcp_options(frame, seg);
        assert_eq!(opts, walk_tcp_options(frame, seg), "read in one piece, as walked");
        if let Some(mss) = opts.mss() {
            assert!(frame.windows(2).any(|w| w == mss.to_be_bytes()));
        }
    }
    if d.family.is_none() {
        assert!(matches!(d.outcome, Outcome::NonIp | Outcome::Malformed(_)));
    }
}

fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..64),
        0usize..3,
    )
        .prop_map(|(ipv6, vlan, flags, payload, opts)| {
            let (src, dst) = if ipv6 { v6() } else { v4() };
            let mut pkt = TcpPacket::new(src, dst, 1234, 80, flags);
            pkt.vlan = vlan.then_some(7);
            pkt.payload = payload;
            pkt.tcp_options = match opts {
                0 => Vec::new(),
                1 => linux_syn_options(1460, 1, 7),
                _ => vec![1, 1, 1, 1],
            };
            pkt.frame()
        })
}

/// A SYN with Linux's option area, `edits` of its 20 option bytes changed
/// (at (index % 20, byte)), and `cut` bytes removed from the frame's end.
fn near_linux_syn(ipv6: bool, mss: u16, tsval: u32, scale: u8, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let (src, dst) = if ipv6 { v6() } else { v4() };
    let mut pkt = TcpPacket::new(src, dst, 1234, 80, SYN);
    pkt.tcp_options = linux_syn_options(mss, tsval, scale);
    for &(at, byte) in edits {
        pkt.tcp_options[at % 20] = byte;
    }
    let mut frame = pkt.frame();
    frame.truncate(frame.len() - cut.min(frame.len()));
    frame
}

#[test]
fn linux_s_option_layout_is_read_in_one_piece() {
    let frame = near_linux_syn(false, 1460, 7, 9, &[], 0);
    let seg = segment(&frame);
    let read = packet::linux_syn_options(frame.as_slice(), &seg).expect("Linux's layout");
    assert_eq!(read, walk_tcp_options(frame.as_slice(), &seg));
    assert_eq!(
        (
            read.mss(),
            read.window_scale(),
            read.sack_permitted(),
            read.timestamp()
        ),
        (Some(1460), Some(9), true, Some((7, 0)))
    );
    // NOP and window scale swapped: another layout, walked.
    let frame = near_linux_syn(false, 1460, 7, 9, &[(16, 3), (17, 3), (18, 9), (19, 1)], 0);
    assert_eq!(
        packet::linux_syn_options(frame.as_slice(), &segment(&frame)),
        None
    );
    assert_eq!(
        parse_tcp_options(frame.as_slice(), &segment(&frame)).window_scale(),
        Some(9)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Reading Linux's layout in one piece finds what the walk finds, or
    /// leaves the area to the walk: whatever bytes changed, on any frame.
    #[test]
    fn linux_s_layout_read_at_once_agrees_with_the_walk(
        ipv6 in any::<bool>(),
        mss in any::<u16>(),
        tsval in any::<u32>(),
        scale in any::<u8>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cut in prop_oneof![Just(0usize), 0usize..30],
    ) {
        let frame = near_linux_syn(ipv6, mss, tsval, scale, &edits, 0);
        let seg = segment(&frame);
        if let Some(read) = packet::linux_syn_options(frame.as_slice(), &seg) {
            prop_assert_eq!(read, walk_tcp_options(frame.as_slice(), &seg));
        } else {
            prop_assert!(!edits.is_empty(), "an untouched Linux area is read at once");
        }
        // The segment as parsed whole, the frame then cut short under it:
        // the area is no longer whole, so it is walked (and found cut).
        let cut_frame = near_linux_syn(ipv6, mss, tsval, scale, &edits, cut);
        if cut > 0 {
            prop_assert_eq!(packet::linux_syn_options(cut_frame.as_slice(), &seg), None);
        }
        prop_assert_eq!(
            parse_tcp_options(cut_frame.as_slice(), &seg),
            walk_tcp_options(cut_frame.as_slice(), &seg)
        );
    }

    /// Linux's area planted in random bytes, under segments of any header
    /// offset and length: read in one piece only where it is the whole
    /// option area of a header the walk would read, and then as walked.
    #[test]
    fn only_a_whole_linux_area_is_read_in_one_piece(
        bytes in prop::collection::vec(any::<u8>(), 200),
        offset in 0usize..=120,
        header_len in prop_oneof![Just(36u16), Just(40u16), Just(44u16)],
        mss in any::<u16>(),
        tsval in any::<u32>(),
        scale in any::<u8>(),
    ) {
        let mut frame = bytes;
        let area = offset + 20;
        frame[area..area + 20].copy_from_slice(&linux_syn_options(mss, tsval, scale));
        let mut seg = TcpSegment::NONE;
        seg.tcp_offset = offset as u16;
        seg.tcp_header_len = header_len;
        let read = packet::linux_syn_options(frame.as_slice(), &seg);
        prop_assert_eq!(read.is_some(), header_len == 40 && offset <= packet::MAX_TCP_OFFSET);
        if let Some(read) = read {
            prop_assert_eq!(read, walk_tcp_options(frame.as_slice(), &seg));
        }
    }

    #[test]
    fn arbitrary_bytes_never_break_the_parser(frame in prop::collection::vec(any::<u8>(), 0..200)) {
        check_consistent(&frame);
    }

    #[test]
    fn valid_frames_parse_as_built(frame in valid_frame()) {
        let seg = segment(&frame);
        prop_assert_eq!(seg.tcp_offset as usize + seg.tcp_header_len as usize + seg.payload_len as usize, frame.len());
    }

    #[test]
    fn every_truncation_is_malformed_or_consistent(frame in valid_frame(), cut in 0usize..200) {
        let cut = cut.min(frame.len());
        let truncated = &frame[..cut];
        check_consistent(truncated);
        if cut < frame.len() {
            prop_assert!(matches!(parse(truncated).outcome, Outcome::Malformed(_)));
        }
    }

    #[test]
    fn mutated_frames_stay_consistent(frame in valid_frame(), edits in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut frame = frame;
        for (at, byte) in edits {
            let at = at % frame.len();
            frame[at] = byte;
        }
        check_consistent(&frame);
    }
}
