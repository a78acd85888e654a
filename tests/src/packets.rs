//! Building Ethernet frames by hand: TCP over IPv4 or IPv6, optional VLAN tag,
//! IP and TCP options, correct checksums. Used for BPF_PROG_TEST_RUN and for
//! raw injection.

use std::net::IpAddr;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// One TCP segment to be framed.
#[derive(Clone, Debug)]
pub struct TcpPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw TCP option bytes, padded by the caller to a multiple of 4.
    pub tcp_options: Vec<u8>,
    /// Raw IPv4 option bytes (multiple of 4); ignored for IPv6.
    pub ip_options: Vec<u8>,
    pub payload: Vec<u8>,
    /// 802.1Q VLAN id, if tagged.
    pub vlan: Option<u16>,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl TcpPacket {
    pub fn new(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, flags: u8) -> Self {
        TcpPacket {
            src,
            dst,
            src_port,
            dst_port,
            seq: 1000,
            ack: if flags & ACK != 0 { 2000 } else { 0 },
            flags,
            window: 64240,
            tcp_options: Vec::new(),
            ip_options: Vec::new(),
            payload: Vec::new(),
            vlan: None,
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
        }
    }

    /// The TCP header and payload, checksummed for this packet's addresses.
    pub fn tcp_segment(&self) -> Vec<u8> {
        assert!(
            self.tcp_options.len().is_multiple_of(4),
            "TCP options must be padded to 32 bits"
        );
        let header_len = 20 + self.tcp_options.len();
        let mut tcp = Vec::with_capacity(header_len + self.payload.len());
        tcp.extend_from_slice(&self.src_port.to_be_bytes());
        tcp.extend_from_slice(&self.dst_port.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push(((header_len / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&self.tcp_options);
        tcp.extend_from_slice(&self.payload);
        let sum = transport_checksum(self.src, self.dst, &tcp);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        tcp
    }

    /// The IP packet (header, options, TCP).
    pub fn ip_packet(&self) -> Vec<u8> {
        let tcp = self.tcp_segment();
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                assert!(
                    self.ip_options.len().is_multiple_of(4),
                    "IPv4 options must be padded to 32 bits"
                );
                let header_len = 20 + self.ip_options.len();
                let total = (header_len + tcp.len()) as u16;
                let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
                ip.extend_from_slice(&total.to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]); // id, DF, ttl, tcp, csum
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&self.ip_options);
                let sum = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                ip.extend_from_slice(&tcp);
                ip
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
                ip.extend_from_slice(&[6, 64]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&tcp);
                ip
            }
            _ => panic!("source and destination must be the same IP version"),
        }
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let ether_type = if self.src.is_ipv4() { 0x0800u16 } else { 0x86dd };
        let mut frame = ethernet(ether_type, self.vlan, &self.ip_packet());
        frame[..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        frame
    }
}

/// An Ethernet frame around `payload`, optionally with an 802.1Q tag.
pub fn ethernet(ether_type: u16, vlan: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(18 + payload.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    if let Some(id) = vlan {
        frame.extend_from_slice(&0x8100u16.to_be_bytes());
        frame.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `frame` (untagged) with an 802.1ad outer tag and an 802.1Q inner one (QinQ).
pub fn qinq(frame: &[u8], outer: u16, inner: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&0x88a8u16.to_be_bytes());
    tagged.extend_from_slice(&(outer & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&0x8100u16.to_be_bytes());
    tagged.extend_from_slice(&(inner & 0x0fff).to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// An IPv6 packet (as `ip_packet` builds it) with an 8-byte extension
/// header of type `kind` (0 hop-by-hop, 60 destination options, 44 a
/// fragment header of an unfragmented packet) before its transport. The
/// transport checksum does not cover extension headers: it stays valid.
pub fn with_ipv6_extension(ip: &[u8], kind: u8) -> Vec<u8> {
    assert_eq!(ip[0] >> 4, 6, "an IPv6 packet");
    let transport = ip[6];
    let mut out = ip[..40].to_vec();
    out[6] = kind;
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) + 8;
    out[4..6].copy_from_slice(&payload_len.to_be_bytes());
    // Next header, length 0 (8 bytes); then PadN over the rest (options)
    // or offset 0, no more fragments, an id (fragment header).
    out.extend_from_slice(&[transport, 0]);
    out.extend_from_slice(if kind == 44 {
        &[0, 0, 0, 0, 0, 1]
    } else {
        &[1, 4, 0, 0, 0, 0]
    });
    out.extend_from_slice(&ip[40..]);
    out
}

/// SYN options as Linux sends them: MSS, SACK permitted, timestamps, NOP, window scale.
pub fn linux_syn_options(mss: u16, tsval: u32, window_scale: u8) -> Vec<u8> {
    let mut opts = vec![2, 4];
    opts.extend_from_slice(&mss.to_be_bytes());
    opts.extend_from_slice(&[4, 2, 8, 10]);
    opts.extend_from_slice(&tsval.to_be_bytes());
    opts.extend_from_slice(&0u32.to_be_bytes());
    opts.extend_from_slice(&[1, 3, 3, window_scale]);
    opts
}

/// Internet checksum of `data`, starting from `initial` (a partial sum).
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP checksum over the pseudo-header and `segment`.
pub fn transport_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 6]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 6]);
        }
        _ => panic!("source and destination must be the same IP version"),
    }
    pseudo.extend_from_slice(segment);
    checksum(&pseudo, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksummed_ipv4_header_sums_to_zero() {
        let pkt = TcpPacket::new(
            "198.18.0.2".parse().unwrap(),
            "198.18.0.1".parse().unwrap(),
            1,
            2,
            SYN,
        );
        let ip = pkt.ip_packet();
        assert_eq!(checksum(&ip[..20], 0), 0);
        assert_eq!(transport_checksum(pkt.src, pkt.dst, &ip[20..]), 0);
    }
}
