//! Packet parsing, written once for the kernel and userspace.
//!
//! The parser walks Ethernet (with up to two 802.1Q/802.1ad tags: QinQ), IPv4
//! (with options) or IPv6 (and, to find the transport, up to
//! [`IPV6_MAX_EXTENSIONS`] extension headers), and TCP (with options), over any
//! [`ByteView`]: the XDP program implements it on the packet buffer, tests and
//! fuzzers on a byte slice. Every read goes through [`ByteView::read`], which
//! returns `None` unless the whole header lies inside the buffer, so no input
//! can make the parser read out of bounds.

/// Marker for types that may be read from arbitrary bytes (reads are unaligned).
///
/// # Safety
/// Implementors must be `#[repr(C)]` and valid for every bit pattern (only
/// integer and byte-array fields).
pub unsafe trait Header: Copy {}

/// Bounds-checked, read-only access to a packet's bytes.
///
/// There is deliberately no `len()`: in the kernel, a length computed as
/// `data_end - data` lets the compiler turn pointer bounds checks into scalar
/// ones the verifier cannot follow. Ask [`ByteView::contains`] instead.
pub trait ByteView {
    /// The header at `offset`, or `None` if it does not lie wholly in the packet.
    fn read<T: Header>(&self, offset: usize) -> Option<T>;

    /// Whether `len` bytes starting at `offset` lie wholly in the packet.
    fn contains(&self, offset: usize, len: usize) -> bool;

    /// The bytes from `offset` to the packet's end, if there are more than
    /// an IP length field holds (65,535): a BIG TCP packet, which the host's
    /// stack builds (GSO past 64 KiB, `gso_ipv4_max_size` / `gso_max_size`)
    /// with the length field 0, the socket buffer's own length standing in
    /// for it. None where no such packet can be (a frame on the wire).
    fn big_len(&self, _offset: usize) -> Option<usize> {
        None
    }
}

/// The most an IP length field holds.
pub const IP_MAX_LEN: usize = 0xffff;

impl ByteView for [u8] {
    #[inline(always)]
    fn contains(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len())
    }

    #[inline(always)]
    fn read<T: Header>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes, the read is
        // unaligned, and `Header` types accept any bit pattern.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// A 16-bit field in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Be16(pub [u8; 2]);

impl Be16 {
    #[inline(always)]
    pub const fn get(self) -> u16 {
        u16::from_be_bytes(self.0)
    }
}

/// A 32-bit field in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Be32(pub [u8; 4]);

impl Be32 {
    #[inline(always)]
    pub const fn get(self) -> u32 {
        u32::from_be_bytes(self.0)
    }
}

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: Be16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VlanHdr {
    pub tci: Be16,
    pub ether_type: Be16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: Be16,
    pub id: Be16,
    pub frag_off: Be16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: Be16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv6Hdr {
    pub version_class_flow: Be32,
    pub payload_len: Be16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpHdr {
    pub src_port: Be16,
    pub dst_port: Be16,
    pub seq: Be32,
    pub ack: Be32,
    /// Data offset in the high nibble, in 32-bit words.
    pub data_offset: u8,
    pub flags: u8,
    pub window: Be16,
    pub check: Be16,
    pub urgent: Be16,
}

/// One byte, for walking TCP options.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Byte(pub u8);

// SAFETY: all are repr(C) structs of u8 and byte arrays.
unsafe impl Header for EthHdr {}
unsafe impl Header for VlanHdr {}
unsafe impl Header for Ipv4Hdr {}
unsafe impl Header for Ipv6Hdr {}
unsafe impl Header for TcpHdr {}
unsafe impl Header for Byte {}

pub const ETH_HDR_LEN: usize = core::mem::size_of::<EthHdr>();
pub const VLAN_HDR_LEN: usize = core::mem::size_of::<VlanHdr>();
pub const IPV4_HDR_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
pub const IPV6_HDR_LEN: usize = core::mem::size_of::<Ipv6Hdr>();
pub const TCP_HDR_LEN: usize = core::mem::size_of::<TcpHdr>();

/// TCP header flags.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    #[inline(always)]
    pub const fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }

    /// The segment's class, from its control flags alone.
    ///
    /// Combinations no TCP stack sends (SYN with FIN or RST, FIN without ACK,
    /// no control flag at all) are `Other`, as scanners and floods use them.
    #[inline(always)]
    pub const fn class(self) -> TcpClass {
        let syn = self.has(Self::SYN);
        let ack = self.has(Self::ACK);
        let fin = self.has(Self::FIN);
        let rst = self.has(Self::RST);
        if syn {
            if fin || rst {
                TcpClass::Other
            } else if ack {
                TcpClass::SynAck
            } else {
                TcpClass::Syn
            }
        } else if rst {
            TcpClass::Rst
        } else if fin {
            if ack { TcpClass::Fin } else { TcpClass::Other }
        } else if ack {
            TcpClass::Ack
        } else {
            TcpClass::Other
        }
    }
}

/// What a TCP segment is, by its control flags.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpClass {
    Syn,
    SynAck,
    /// ACK without SYN, FIN or RST: handshake completion, data, pure ACKs.
    Ack,
    /// FIN with ACK (a FIN may carry data).
    Fin,
    /// RST, with or without ACK.
    Rst,
    /// Any combination no TCP stack sends.
    Other,
}

/// IP version of a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

/// Why a packet could not be parsed. Each reason has its own counter.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    EthernetTruncated,
    /// A VLAN ethertype with no room for the tag.
    VlanTruncated,
    /// Ethertype IPv4 with no room for a 20-byte header.
    Ipv4Truncated,
    /// IPv4 version field is not 4.
    Ipv4BadVersion,
    /// IHL below 5, or the header with options runs past the frame.
    Ipv4BadHeaderLength,
    /// Total length shorter than the header or longer than the frame.
    Ipv4BadTotalLength,
    /// Ethertype IPv6 with no room for the 40-byte header.
    Ipv6Truncated,
    /// IPv6 version field is not 6.
    Ipv6BadVersion,
    /// Payload length longer than the frame.
    Ipv6BadPayloadLength,
    /// IP payload too short for a 20-byte TCP header.
    TcpTruncated,
    /// Data offset below 5, or header with options longer than the IP payload.
    TcpBadDataOffset,
}

impl Malformed {
    pub const ALL: [Malformed; 11] = [
        Malformed::EthernetTruncated,
        Malformed::VlanTruncated,
        Malformed::Ipv4Truncated,
        Malformed::Ipv4BadVersion,
        Malformed::Ipv4BadHeaderLength,
        Malformed::Ipv4BadTotalLength,
        Malformed::Ipv6Truncated,
        Malformed::Ipv6BadVersion,
        Malformed::Ipv6BadPayloadLength,
        Malformed::TcpTruncated,
        Malformed::TcpBadDataOffset,
    ];
}

/// A parsed TCP segment: what the fast path needs to know about it.
///
/// `repr(C)` without padding, and never inside an enum: in the kernel every
/// byte must be defined on every path, or LLVM may spill an undefined
/// register, which the verifier refuses to read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source address; an IPv4 address fills the first 4 bytes, the rest are 0.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub seq: u32,
    pub ack: u32,
    /// Bytes of TCP payload (excluding the header and any link-layer padding).
    pub payload_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub window: u16,
    /// Offset of the TCP header from the start of the frame.
    pub tcp_offset: u16,
    /// TCP header length including options, in bytes.
    pub tcp_header_len: u16,
    pub flags: TcpFlags,
    pub family: Family,
}

impl TcpSegment {
    /// The segment of a frame that is not TCP.
    pub const NONE: TcpSegment = TcpSegment {
        src: [0; 16],
        dst: [0; 16],
        seq: 0,
        ack: 0,
        payload_len: 0,
        src_port: 0,
        dst_port: 0,
        window: 0,
        tcp_offset: 0,
        tcp_header_len: 0,
        flags: TcpFlags(0),
        family: Family::V4,
    };
}

/// What a packet is, once parsed. (Fieldless but for a fieldless reason: one byte.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
    /// IPv4 or IPv6 carrying something other than TCP.
    NonTcp,
    /// An IPv4 fragment: its TCP header (if any) cannot be trusted alone.
    /// [`Dissection::unparsed_tcp`] says whether it is TCP.
    Ipv4Fragment,
    /// IPv6 with extension headers before the transport header: walked to
    /// find the transport, not enforced on. [`Dissection::unparsed_tcp`]
    /// says whether it is (or may be) TCP.
    Ipv6Extension,
    /// TCP: see [`Dissection::segment`].
    Tcp,
    Malformed(Malformed),
}

/// The result of parsing one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dissection {
    /// The frame carried an 802.1Q or 802.1ad tag (or two).
    pub vlan: bool,
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: u16,
    /// TCP the fast path cannot enforce on: an IPv4 fragment of TCP, or TCP
    /// (or a transport the walk could not reach) behind IPv6 extension
    /// headers. The segment then holds its addresses and family only.
    pub unparsed_tcp: bool,
    /// IP version, once the ethertype said IP.
    pub family: Option<Family>,
    pub outcome: Outcome,
    /// The TCP segment when `outcome` is `Tcp`, else [`TcpSegment::NONE`].
    pub segment: TcpSegment,
}

impl Dissection {
    /// The TCP segment, if the frame is one.
    pub fn tcp(&self) -> Option<&TcpSegment> {
        (self.outcome == Outcome::Tcp).then_some(&self.segment)
    }

    /// Whether the frame is a TCP segment longer than its IP length field
    /// can say (BIG TCP: see [`ByteView::big_len`]).
    pub fn big_tcp(&self) -> bool {
        let Some(segment) = self.tcp() else {
            return false;
        };
        let ip_len = (segment.tcp_offset as usize).saturating_sub(self.l3_offset as usize)
            + segment.tcp_header_len as usize
            + segment.payload_len as usize;
        let fixed = match segment.family {
            Family::V4 => 0,
            Family::V6 => IPV6_HDR_LEN,
        };
        ip_len.saturating_sub(fixed) > IP_MAX_LEN
    }
}

/// What the IP layer found: an outcome, the segment when it is TCP, and
/// whether it is TCP the fast path cannot enforce on.
type Layer = (Outcome, TcpSegment, bool);

const fn not_tcp(outcome: Outcome) -> Layer {
    (outcome, TcpSegment::NONE, false)
}

/// TCP the fast path cannot enforce on (see [`Dissection::unparsed_tcp`]):
/// the segment holds its addresses and family only.
const fn unparsed_tcp(outcome: Outcome, family: Family, src: [u8; 16], dst: [u8; 16]) -> Layer {
    let mut segment = TcpSegment::NONE;
    segment.src = src;
    segment.dst = dst;
    segment.family = family;
    (outcome, segment, true)
}

/// IPv6 next-header values that are extension headers, not transports.
#[inline(always)]
const fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Extension headers walked to find an IPv6 packet's transport; a longer
/// chain counts as possibly TCP.
pub const IPV6_MAX_EXTENSIONS: usize = 4;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;

/// The first two bytes of every IPv6 extension header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Ipv6ExtHdr {
    pub next_header: u8,
    pub len: u8,
}

// SAFETY: repr(C) struct of u8.
unsafe impl Header for Ipv6ExtHdr {}

/// Parses one Ethernet frame.
///
/// IP lengths may be shorter than the frame (Ethernet padding) but never
/// longer; the TCP payload length comes from the IP header.
#[inline(always)]
pub fn parse<V: ByteView + ?Sized>(view: &V) -> Dissection {
    let mut d = Dissection {
        vlan: false,
        l3_offset: ETH_HDR_LEN as u16,
        unparsed_tcp: false,
        family: None,
        outcome: Outcome::NonIp,
        segment: TcpSegment::NONE,
    };
    let Some(eth) = view.read::<EthHdr>(0) else {
        d.outcome = Outcome::Malformed(Malformed::EthernetTruncated);
        return d;
    };
    let mut ether_type = eth.ether_type.get();
    let mut l3 = ETH_HDR_LEN;
    // QinQ: an outer tag, then an inner one; a third is not IP here.
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        d.vlan = true;
        let Some(vlan) = view.read::<VlanHdr>(l3) else {
            d.outcome = Outcome::Malformed(Malformed::VlanTruncated);
            return d;
        };
        ether_type = vlan.ether_type.get();
        l3 += VLAN_HDR_LEN;
    }
    d.l3_offset = l3 as u16;
    (d.outcome, d.segment, d.unparsed_tcp) = match ether_type {
        ETH_P_IPV4 => {
            d.family = Some(Family::V4);
            parse_ipv4(view, l3)
        }
        ETH_P_IPV6 => {
            d.family = Some(Family::V6);
            parse_ipv6(view, l3)
        }
        _ => not_tcp(Outcome::NonIp),
    };
    d
}

/// Tags walked before the ethertype that says IP.
pub const MAX_VLAN_TAGS: usize = 2;

/// An IPv4 address in the first 4 bytes of 16, the rest zero. (Built from
/// a 128-bit word, two 64-bit stores: zeroing an array compiles to a call
/// of a byte-by-byte memset on BPF.)
#[inline(always)]
const fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    let low = u32::from_le_bytes(a) as u128;
    low.to_le_bytes()
}

#[inline(always)]
fn parse_ipv4<V: ByteView + ?Sized>(view: &V, l3: usize) -> Layer {
    let Some(ip) = view.read::<Ipv4Hdr>(l3) else {
        return not_tcp(Outcome::Malformed(Malformed::Ipv4Truncated));
    };
    if ip.version_ihl >> 4 != 4 {
        return not_tcp(Outcome::Malformed(Malformed::Ipv4BadVersion));
    }
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if header_len < IPV4_HDR_LEN || !view.contains(l3, header_len) {
        return not_tcp(Outcome::Malformed(Malformed::Ipv4BadHeaderLength));
    }
    let total_len = match ip.total_len.get() {
        0 => view.big_len(l3).unwrap_or(0),
        len => len as usize,
    };
    if total_len < header_len || !view.contains(l3, total_len) {
        return not_tcp(Outcome::Malformed(Malformed::Ipv4BadTotalLength));
    }
    let (src, dst) = (v4_addr(ip.src), v4_addr(ip.dst));
    // More-fragments set or a non-zero offset.
    if ip.frag_off.get() & 0x3fff != 0 {
        if ip.protocol != IPPROTO_TCP {
            return not_tcp(Outcome::Ipv4Fragment);
        }
        return unparsed_tcp(Outcome::Ipv4Fragment, Family::V4, src, dst);
    }
    if ip.protocol != IPPROTO_TCP {
        return not_tcp(Outcome::NonTcp);
    }
    parse_tcp(
        view,
        Family::V4,
        src,
        dst,
        l3 + header_len,
        total_len - header_len,
    )
}

#[inline(always)]
fn parse_ipv6<V: ByteView + ?Sized>(view: &V, l3: usize) -> Layer {
    let Some(ip) = view.read::<Ipv6Hdr>(l3) else {
        return not_tcp(Outcome::Malformed(Malformed::Ipv6Truncated));
    };
    if ip.version_class_flow.get() >> 28 != 6 {
        return not_tcp(Outcome::Malformed(Malformed::Ipv6BadVersion));
    }
    let mut payload_len = ip.payload_len.get() as usize;
    if !view.contains(l3 + IPV6_HDR_LEN, payload_len) {
        return not_tcp(Outcome::Malformed(Malformed::Ipv6BadPayloadLength));
    }
    if payload_len == 0
        && let Some(big_len) = view.big_len(l3 + IPV6_HDR_LEN)
    {
        if ip.next_header == IPV6_HOP_BY_HOP
            && let Some(layer) = jumbo_tcp(view, ip.src, ip.dst, l3 + IPV6_HDR_LEN, big_len)
        {
            return layer;
        }
        payload_len = big_len;
    }
    if ip.next_header == IPPROTO_TCP {
        return parse_tcp(view, Family::V6, ip.src, ip.dst, l3 + IPV6_HDR_LEN, payload_len);
    }
    if !is_ipv6_extension(ip.next_header) {
        return not_tcp(Outcome::NonTcp);
    }
    // Walk the chain only to learn whether TCP follows: a SYN behind an
    // extension header must not pass for something else.
    let mut next = ip.next_header;
    let mut at = l3 + IPV6_HDR_LEN;
    for _ in 0..IPV6_MAX_EXTENSIONS {
        let Some(ext) = view.read::<Ipv6ExtHdr>(at) else {
            break;
        };
        let len = match next {
            IPV6_FRAGMENT => 8,
            IPV6_AUTH => (ext.len as usize + 2) * 4,
            _ => (ext.len as usize + 1) * 8,
        };
        next = ext.next_header;
        at += len;
        if next == IPPROTO_TCP {
            break;
        }
        if !is_ipv6_extension(next) {
            return not_tcp(Outcome::Ipv6Extension);
        }
    }
    // TCP, or a chain too long or cut short to tell: either may carry a SYN.
    unparsed_tcp(Outcome::Ipv6Extension, Family::V6, ip.src, ip.dst)
}

/// TCP in a BIG TCP packet of `big_len` bytes past the IPv6 header, as
/// Linux before 7.0 sends it: a hop-by-hop header at `hbh` holding nothing
/// but a jumbo payload option (RFC 2675) with that length, then TCP. None
/// for anything else, which the extension headers' walk then takes.
#[inline(always)]
fn jumbo_tcp<V: ByteView + ?Sized>(
    view: &V,
    src: [u8; 16],
    dst: [u8; 16],
    hbh: usize,
    big_len: usize,
) -> Option<Layer> {
    let jumbo = view.read::<JumboHbh>(hbh)?;
    let hbh_len = size_of::<JumboHbh>();
    (jumbo.next_header == IPPROTO_TCP
        && jumbo.len == 0
        && jumbo.option == [IPV6_TLV_JUMBO, 4]
        && jumbo.payload_len.get() as usize == big_len)
        .then(|| parse_tcp(view, Family::V6, src, dst, hbh + hbh_len, big_len - hbh_len))
}

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_TLV_JUMBO: u8 = 0xc2;

/// A hop-by-hop header of 8 bytes holding one jumbo payload option.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct JumboHbh {
    pub next_header: u8,
    /// In 8-byte units past the first 8: 0.
    pub len: u8,
    /// Type and length of the option.
    pub option: [u8; 2],
    /// The length of all past the IPv6 header, this header included.
    pub payload_len: Be32,
}

// SAFETY: repr(C) struct of u8 and a byte array.
unsafe impl Header for JumboHbh {}

/// Parses the TCP header at `offset`, inside an IP payload of `ip_payload_len` bytes.
#[inline(always)]
fn parse_tcp<V: ByteView + ?Sized>(
    view: &V,
    family: Family,
    src: [u8; 16],
    dst: [u8; 16],
    offset: usize,
    ip_payload_len: usize,
) -> Layer {
    if ip_payload_len < TCP_HDR_LEN {
        return not_tcp(Outcome::Malformed(Malformed::TcpTruncated));
    }
    let Some(tcp) = view.read::<TcpHdr>(offset) else {
        return not_tcp(Outcome::Malformed(Malformed::TcpTruncated));
    };
    let header_len = ((tcp.data_offset >> 4) as usize) * 4;
    if header_len < TCP_HDR_LEN || header_len > ip_payload_len {
        return not_tcp(Outcome::Malformed(Malformed::TcpBadDataOffset));
    }
    let segment = TcpSegment {
        src,
        dst,
        seq: tcp.seq.get(),
        ack: tcp.ack.get(),
        payload_len: (ip_payload_len - header_len) as u32,
        src_port: tcp.src_port.get(),
        dst_port: tcp.dst_port.get(),
        window: tcp.window.get(),
        // Both below 2^16: offsets are at most 18 + 60 bytes into the frame.
        tcp_offset: offset as u16,
        tcp_header_len: header_len as u16,
        flags: TcpFlags(tcp.flags),
        family,
    };
    (Outcome::Tcp, segment, false)
}

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOPT_WINDOW_SCALE: u8 = 3;
pub const TCPOPT_SACK_PERMITTED: u8 = 4;
pub const TCPOPT_TIMESTAMP: u8 = 8;

/// The TCP options the fast path cares about (those a SYN negotiates).
///
/// Plain fields and presence bits, no `Option`s: the kernel writes this
/// struct, and an `Option`'s undefined payload may be stored from a stale
/// register, which the verifier refuses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub tsval: u32,
    pub tsecr: u32,
    pub mss: u16,
    pub window_scale: u8,
    /// [`TcpOptions::MSS`], [`TcpOptions::WINDOW_SCALE`], [`TcpOptions::SACK_PERMITTED`], [`TcpOptions::TIMESTAMP`]
    pub present: u8,
    /// The option list was cut short or had a bad length; what was read before stays.
    pub malformed: bool,
    pub _pad: [u8; 3],
}

impl TcpOptions {
    pub const MSS: u8 = 0x01;
    pub const WINDOW_SCALE: u8 = 0x02;
    pub const SACK_PERMITTED: u8 = 0x04;
    pub const TIMESTAMP: u8 = 0x08;

    pub const fn mss(&self) -> Option<u16> {
        if self.present & Self::MSS != 0 {
            Some(self.mss)
        } else {
            None
        }
    }

    pub const fn window_scale(&self) -> Option<u8> {
        if self.present & Self::WINDOW_SCALE != 0 {
            Some(self.window_scale)
        } else {
            None
        }
    }

    pub const fn sack_permitted(&self) -> bool {
        self.present & Self::SACK_PERMITTED != 0
    }

    /// (TSval, TSecr)
    pub const fn timestamp(&self) -> Option<(u32, u32)> {
        if self.present & Self::TIMESTAMP != 0 {
            Some((self.tsval, self.tsecr))
        } else {
            None
        }
    }
}

/// Longest TCP header, options included.
pub const TCP_MAX_HDR_LEN: usize = 60;

/// Longest TCP option area: a 60-byte header less the fixed 20.
pub const TCP_MAX_OPTIONS_LEN: usize = TCP_MAX_HDR_LEN - TCP_HDR_LEN;

/// Furthest a TCP header can start: Ethernet, two VLAN tags, IPv4 with 40 bytes of options.
pub const MAX_TCP_OFFSET: usize = ETH_HDR_LEN + MAX_VLAN_TAGS * VLAN_HDR_LEN + 60;

/// A walk over a segment's options, one option per [`OptionWalk::step`].
/// Userspace loops over it ([`walk_tcp_options`]); the kernel drives it with
/// `bpf_loop`, so the verifier checks one step rather than every path
/// through 40 bytes of options.
#[derive(Clone, Copy, Debug)]
pub struct OptionWalk {
    /// Frame offset of the first option byte.
    start: usize,
    /// Bytes of options.
    len: usize,
    /// Offset of the next option within the option area.
    next: usize,
    pub options: TcpOptions,
}

impl OptionWalk {
    pub fn new(segment: &TcpSegment) -> OptionWalk {
        let offset = segment.tcp_offset as usize;
        let header_len = segment.tcp_header_len as usize;
        let mut walk = OptionWalk {
            start: offset + TCP_HDR_LEN,
            len: header_len.saturating_sub(TCP_HDR_LEN),
            next: 0,
            options: TcpOptions::default(),
        };
        // Bounds the verifier can see: every position stays inside a 40-byte
        // option area no further than MAX_TCP_OFFSET into the frame.
        if offset > MAX_TCP_OFFSET || !(TCP_HDR_LEN..=TCP_MAX_HDR_LEN).contains(&header_len) {
            walk.options.malformed = true;
            walk.start = 0;
            walk.len = 0;
        }
        walk
    }

    /// Reads the next option; false once there is none left.
    #[inline(always)]
    pub fn step<V: ByteView + ?Sized>(&mut self, view: &V) -> bool {
        let i = self.next;
        if i >= self.len || i >= TCP_MAX_OPTIONS_LEN || self.start > MAX_TCP_OFFSET + TCP_HDR_LEN {
            return false;
        }
        let at = self.start + i;
        let Some(Byte(kind)) = view.read::<Byte>(at) else {
            self.options.malformed = true;
            return false;
        };
        if kind == TCPOPT_EOL {
            return false;
        }
        if kind == TCPOPT_NOP {
            self.next = i + 1;
            return true;
        }
        let Some(Byte(opt_len)) = view.read::<Byte>(at + 1) else {
            self.options.malformed = true;
            return false;
        };
        let opt_len = opt_len as usize;
        if opt_len < 2 || i + opt_len > self.len {
            self.options.malformed = true;
            return false;
        }
        let body = at + 2;
        let opts = &mut self.options;
        match (kind, opt_len) {
            (TCPOPT_MSS, 4) => {
                if let Some(mss) = view.read::<Be16>(body) {
                    opts.mss = mss.get();
                    opts.present |= TcpOptions::MSS;
                }
            }
            (TCPOPT_WINDOW_SCALE, 3) => {
                if let Some(Byte(scale)) = view.read::<Byte>(body) {
                    opts.window_scale = scale;
                    opts.present |= TcpOptions::WINDOW_SCALE;
                }
            }
            (TCPOPT_SACK_PERMITTED, 2) => opts.present |= TcpOptions::SACK_PERMITTED,
            (TCPOPT_TIMESTAMP, 10) => {
                if let (Some(val), Some(ecr)) = (view.read::<Be32>(body), view.read::<Be32>(body + 4)) {
                    opts.tsval = val.get();
                    opts.tsecr = ecr.get();
                    opts.present |= TcpOptions::TIMESTAMP;
                }
            }
            (TCPOPT_MSS | TCPOPT_WINDOW_SCALE | TCPOPT_SACK_PERMITTED | TCPOPT_TIMESTAMP, _) => {
                opts.malformed = true;
            }
            _ => {}
        }
        self.next = i + opt_len;
        true
    }
}

/// The options of `segment`: [`linux_syn_options`] where they are laid
/// out as Linux sends them, else [`walk_tcp_options`].
pub fn parse_tcp_options<V: ByteView + ?Sized>(view: &V, segment: &TcpSegment) -> TcpOptions {
    linux_syn_options(view, segment).unwrap_or_else(|| walk_tcp_options(view, segment))
}

/// The option area of a SYN or SYN-ACK from Linux, in its order: MSS,
/// SACK permitted, timestamps, NOP, window scale (20 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LinuxSynOptions {
    mss_kind_len: [u8; 2],
    mss: Be16,
    sack_permitted_kind_len: [u8; 2],
    timestamp_kind_len: [u8; 2],
    tsval: Be32,
    tsecr: Be32,
    nop: u8,
    window_scale_kind_len: [u8; 2],
    window_scale: u8,
}

// SAFETY: repr(C) struct of bytes and byte arrays.
unsafe impl Header for LinuxSynOptions {}

impl LinuxSynOptions {
    /// The TCP header length of a segment whose options may be these.
    pub const HEADER_LEN: usize = TCP_HDR_LEN + size_of::<LinuxSynOptions>();

    /// What the walk finds in this area, if it is laid out as Linux lays it
    /// out (the layout leaves no other reading), else None. For a segment
    /// whose whole option area this is (TCP header length
    /// [`Self::HEADER_LEN`]).
    #[inline(always)]
    pub fn options(&self) -> Option<TcpOptions> {
        let laid_out = self.mss_kind_len == [TCPOPT_MSS, 4]
            && self.sack_permitted_kind_len == [TCPOPT_SACK_PERMITTED, 2]
            && self.timestamp_kind_len == [TCPOPT_TIMESTAMP, 10]
            && self.nop == TCPOPT_NOP
            && self.window_scale_kind_len == [TCPOPT_WINDOW_SCALE, 3];
        laid_out.then_some(TcpOptions {
            tsval: self.tsval.get(),
            tsecr: self.tsecr.get(),
            mss: self.mss.get(),
            window_scale: self.window_scale,
            present: TcpOptions::MSS
                | TcpOptions::SACK_PERMITTED
                | TcpOptions::TIMESTAMP
                | TcpOptions::WINDOW_SCALE,
            malformed: false,
            _pad: [0; 3],
        })
    }
}

/// The options of `segment` if its option area is exactly Linux's SYN
/// layout, read in one piece: what the walk finds there, without one step
/// per option. A Linux host's SYNs have it with its default settings
/// (timestamps, SACK and window scaling on), and its SYN-ACKs to a SYN that
/// offered all three; None for any other area (Fast Open, MD5, MPTCP, other
/// systems' orders). (The kernel programs read the area themselves, with
/// bounds the verifier can follow, and ask [`LinuxSynOptions::options`].)
pub fn linux_syn_options<V: ByteView + ?Sized>(view: &V, segment: &TcpSegment) -> Option<TcpOptions> {
    let offset = segment.tcp_offset as usize;
    if segment.tcp_header_len as usize != LinuxSynOptions::HEADER_LEN || offset > MAX_TCP_OFFSET {
        return None;
    }
    view.read::<LinuxSynOptions>(offset + TCP_HDR_LEN)?.options()
}

/// Walks the options of `segment` (at most 40 steps: one per option byte).
pub fn walk_tcp_options<V: ByteView + ?Sized>(view: &V, segment: &TcpSegment) -> TcpOptions {
    let mut walk = OptionWalk::new(segment);
    for _ in 0..TCP_MAX_OPTIONS_LEN {
        if !walk.step(view) {
            break;
        }
    }
    walk.options
}

// SAFETY: transparent wrappers of byte arrays.
unsafe impl Header for Be16 {}
unsafe impl Header for Be32 {}
