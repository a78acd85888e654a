//! Packet parsing, written once for the kernel and userspace.
//!
//! The parser walks Ethernet (with at most one 802.1Q/802.1ad tag), IPv4 (with
//! options) or IPv6 (fixed header), and TCP (with options), over any
//! [`ByteView`]: the XDP program implements it on the packet buffer, tests and
//! fuzzers on a byte slice. Every read goes through [`ByteView::read`], which
//! returns `None` unless the whole header lies inside the buffer, so no input
//! can make the parser read out of bounds.

/// Marker for header types that may be read from arbitrary bytes.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, have alignment 1 and be valid for every
/// bit pattern (only `u8` and byte-array fields).
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
}

impl ByteView for [u8] {
    #[inline(always)]
    fn contains(&self, offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.len())
    }

    #[inline(always)]
    fn read<T: Header>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes, and `Header`
        // types have alignment 1 and accept any bit pattern.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub family: Family,
    /// Source address; an IPv4 address fills the first 4 bytes, the rest are 0.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: TcpFlags,
    pub window: u16,
    /// Offset of the TCP header from the start of the frame.
    pub tcp_offset: usize,
    /// TCP header length including options, in bytes.
    pub tcp_header_len: usize,
    /// Bytes of TCP payload (excluding the header and any link-layer padding).
    pub payload_len: u32,
}

/// What a packet is, once parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
    /// IPv4 or IPv6 carrying something other than TCP.
    NonTcp,
    /// An IPv4 fragment: its TCP header (if any) cannot be trusted alone.
    Ipv4Fragment,
    /// IPv6 with an extension header before the transport header; not walked yet.
    Ipv6Extension,
    Tcp(TcpSegment),
    Malformed(Malformed),
}

/// The result of parsing one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dissection {
    /// The frame carried an 802.1Q or 802.1ad tag.
    pub vlan: bool,
    /// IP version, once the ethertype said IP.
    pub family: Option<Family>,
    pub outcome: Outcome,
}

/// IPv6 next-header values that are extension headers, not transports.
#[inline(always)]
const fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(next_header, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

/// Parses one Ethernet frame.
///
/// IP lengths may be shorter than the frame (Ethernet padding) but never
/// longer; the TCP payload length comes from the IP header.
#[inline(always)]
pub fn parse<V: ByteView + ?Sized>(view: &V) -> Dissection {
    let mut d = Dissection {
        vlan: false,
        family: None,
        outcome: Outcome::NonIp,
    };
    let Some(eth) = view.read::<EthHdr>(0) else {
        d.outcome = Outcome::Malformed(Malformed::EthernetTruncated);
        return d;
    };
    let mut ether_type = eth.ether_type.get();
    let mut l3 = ETH_HDR_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        d.vlan = true;
        let Some(vlan) = view.read::<VlanHdr>(ETH_HDR_LEN) else {
            d.outcome = Outcome::Malformed(Malformed::VlanTruncated);
            return d;
        };
        ether_type = vlan.ether_type.get();
        l3 = ETH_HDR_LEN + VLAN_HDR_LEN;
    }
    d.outcome = match ether_type {
        ETH_P_IPV4 => {
            d.family = Some(Family::V4);
            parse_ipv4(view, l3)
        }
        ETH_P_IPV6 => {
            d.family = Some(Family::V6);
            parse_ipv6(view, l3)
        }
        _ => Outcome::NonIp,
    };
    d
}

#[inline(always)]
fn parse_ipv4<V: ByteView + ?Sized>(view: &V, l3: usize) -> Outcome {
    let Some(ip) = view.read::<Ipv4Hdr>(l3) else {
        return Outcome::Malformed(Malformed::Ipv4Truncated);
    };
    if ip.version_ihl >> 4 != 4 {
        return Outcome::Malformed(Malformed::Ipv4BadVersion);
    }
    let header_len = ((ip.version_ihl & 0x0f) as usize) * 4;
    if header_len < IPV4_HDR_LEN || !view.contains(l3, header_len) {
        return Outcome::Malformed(Malformed::Ipv4BadHeaderLength);
    }
    let total_len = ip.total_len.get() as usize;
    if total_len < header_len || !view.contains(l3, total_len) {
        return Outcome::Malformed(Malformed::Ipv4BadTotalLength);
    }
    // More-fragments set or a non-zero offset.
    if ip.frag_off.get() & 0x3fff != 0 {
        return Outcome::Ipv4Fragment;
    }
    if ip.protocol != IPPROTO_TCP {
        return Outcome::NonTcp;
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip.src);
    dst[..4].copy_from_slice(&ip.dst);
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
fn parse_ipv6<V: ByteView + ?Sized>(view: &V, l3: usize) -> Outcome {
    let Some(ip) = view.read::<Ipv6Hdr>(l3) else {
        return Outcome::Malformed(Malformed::Ipv6Truncated);
    };
    if ip.version_class_flow.get() >> 28 != 6 {
        return Outcome::Malformed(Malformed::Ipv6BadVersion);
    }
    let payload_len = ip.payload_len.get() as usize;
    if !view.contains(l3 + IPV6_HDR_LEN, payload_len) {
        return Outcome::Malformed(Malformed::Ipv6BadPayloadLength);
    }
    if ip.next_header != IPPROTO_TCP {
        return if is_ipv6_extension(ip.next_header) {
            Outcome::Ipv6Extension
        } else {
            Outcome::NonTcp
        };
    }
    parse_tcp(view, Family::V6, ip.src, ip.dst, l3 + IPV6_HDR_LEN, payload_len)
}

/// Parses the TCP header at `offset`, inside an IP payload of `ip_payload_len` bytes.
#[inline(always)]
fn parse_tcp<V: ByteView + ?Sized>(
    view: &V,
    family: Family,
    src: [u8; 16],
    dst: [u8; 16],
    offset: usize,
    ip_payload_len: usize,
) -> Outcome {
    if ip_payload_len < TCP_HDR_LEN {
        return Outcome::Malformed(Malformed::TcpTruncated);
    }
    let Some(tcp) = view.read::<TcpHdr>(offset) else {
        return Outcome::Malformed(Malformed::TcpTruncated);
    };
    let header_len = ((tcp.data_offset >> 4) as usize) * 4;
    if header_len < TCP_HDR_LEN || header_len > ip_payload_len {
        return Outcome::Malformed(Malformed::TcpBadDataOffset);
    }
    Outcome::Tcp(TcpSegment {
        family,
        src,
        dst,
        src_port: tcp.src_port.get(),
        dst_port: tcp.dst_port.get(),
        seq: tcp.seq.get(),
        ack: tcp.ack.get(),
        flags: TcpFlags(tcp.flags),
        window: tcp.window.get(),
        tcp_offset: offset,
        tcp_header_len: header_len,
        payload_len: (ip_payload_len - header_len) as u32,
    })
}

pub const TCPOPT_EOL: u8 = 0;
pub const TCPOPT_NOP: u8 = 1;
pub const TCPOPT_MSS: u8 = 2;
pub const TCPOPT_WINDOW_SCALE: u8 = 3;
pub const TCPOPT_SACK_PERMITTED: u8 = 4;
pub const TCPOPT_TIMESTAMP: u8 = 8;

/// The TCP options the fast path cares about (those a SYN negotiates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    /// (TSval, TSecr)
    pub timestamp: Option<(u32, u32)>,
    /// The option list was cut short or had a bad length; what was read before stays.
    pub malformed: bool,
}

/// Longest TCP option area: a 60-byte header less the fixed 20.
pub const TCP_MAX_OPTIONS_LEN: usize = 40;

/// Walks the options of `segment` (a bounded loop: at most 40 bytes).
#[inline(always)]
pub fn parse_tcp_options<V: ByteView + ?Sized>(view: &V, segment: &TcpSegment) -> TcpOptions {
    let mut opts = TcpOptions::default();
    let start = segment.tcp_offset + TCP_HDR_LEN;
    let len = segment.tcp_header_len - TCP_HDR_LEN;
    let mut i = 0;
    while i < len && i < TCP_MAX_OPTIONS_LEN {
        let Some(Byte(kind)) = view.read::<Byte>(start + i) else {
            opts.malformed = true;
            break;
        };
        match kind {
            TCPOPT_EOL => break,
            TCPOPT_NOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let Some(Byte(opt_len)) = view.read::<Byte>(start + i + 1) else {
            opts.malformed = true;
            break;
        };
        let opt_len = opt_len as usize;
        if opt_len < 2 || i + opt_len > len {
            opts.malformed = true;
            break;
        }
        let body = start + i + 2;
        match (kind, opt_len) {
            (TCPOPT_MSS, 4) => opts.mss = view.read::<Be16>(body).map(Be16::get),
            (TCPOPT_WINDOW_SCALE, 3) => opts.window_scale = view.read::<Byte>(body).map(|b| b.0),
            (TCPOPT_SACK_PERMITTED, 2) => opts.sack_permitted = true,
            (TCPOPT_TIMESTAMP, 10) => {
                if let (Some(val), Some(ecr)) = (view.read::<Be32>(body), view.read::<Be32>(body + 4)) {
                    opts.timestamp = Some((val.get(), ecr.get()));
                }
            }
            (TCPOPT_MSS | TCPOPT_WINDOW_SCALE | TCPOPT_SACK_PERMITTED | TCPOPT_TIMESTAMP, _) => {
                opts.malformed = true;
            }
            _ => {}
        }
        i += opt_len;
    }
    opts
}

// SAFETY: transparent wrappers of byte arrays.
unsafe impl Header for Be16 {}
unsafe impl Header for Be32 {}
