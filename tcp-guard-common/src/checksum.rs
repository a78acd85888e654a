//! Internet checksums (RFC 1071) of what the fast path answers or accepts,
//! computed in memory order: sums of native-endian 16-bit words, as the
//! kernel's `csum_partial` (and so `bpf_csum_diff`) adds them. The kernel
//! sums the packet with the helper; the rest is here, shared with tests.

use crate::packet::{Family, IPPROTO_TCP};

/// Folds a sum of 16-bit words to 16 bits, with end-around carry.
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

#[inline(always)]
const fn word(bytes: [u8; 2]) -> u64 {
    u16::from_ne_bytes(bytes) as u64
}

/// The sum of `addr`'s 16-bit words (4 bytes for IPv4, 16 for IPv6).
#[inline(always)]
fn address_sum(family: Family, addr: &[u8; 16]) -> u64 {
    let words = if family == Family::V4 { 2 } else { 8 };
    let mut sum = 0;
    let mut i = 0;
    while i < 8 {
        if i < words {
            sum += word([addr[2 * i], addr[2 * i + 1]]);
        }
        i += 1;
    }
    sum
}

/// The folded sum of the TCP pseudo-header: addresses, protocol and the
/// TCP length (header and payload).
#[inline(always)]
pub fn pseudo_header(family: Family, src: &[u8; 16], dst: &[u8; 16], tcp_len: u32) -> u16 {
    let len = tcp_len.to_be_bytes();
    let sum = address_sum(family, src)
        + address_sum(family, dst)
        + word([0, IPPROTO_TCP])
        + word([len[0], len[1]])
        + word([len[2], len[3]]);
    fold(sum)
}

/// Whether a TCP checksum holds: `segment_sum` is the sum of the whole
/// segment (the checksum field included), `check` the field as stored.
/// A local sender over veth leaves the sum to a NIC that is not there
/// (CHECKSUM_PARTIAL): the field then holds the pseudo-header's folded sum,
/// which the receiving kernel trusts, and so does this.
#[inline(always)]
pub fn tcp_checksum_holds(pseudo: u16, segment_sum: u64, check: [u8; 2]) -> bool {
    fold(pseudo as u64 + segment_sum) == 0xffff || u16::from_ne_bytes(check) == pseudo
}

/// Whether an IPv4 header checksum holds, from the sum of the header.
#[inline(always)]
pub const fn ipv4_header_holds(header_sum: u64) -> bool {
    fold(header_sum) == 0xffff
}

/// The sum of `bytes` in memory order (an odd last byte padded with zero),
/// as the kernel computes it: for tests and userspace.
pub fn sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|pair| word([pair[0], pair.get(1).copied().unwrap_or(0)]))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_v4(check: [u8; 2]) -> Vec<u8> {
        let mut segment = vec![
            0x9c, 0x40, 0x1f, 0x90, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0,
        ];
        segment.extend_from_slice(&check);
        segment.extend_from_slice(&[0, 0, 0xab]);
        segment
    }

    #[test]
    fn a_full_checksum_and_the_partial_form_hold_and_a_corrupt_one_does_not() {
        let src = [198, 19, 7, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let dst = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let unfilled = tcp_v4([0, 0]);
        let pseudo = pseudo_header(Family::V4, &src, &dst, unfilled.len() as u32);
        let full = (!fold(pseudo as u64 + sum(&unfilled))).to_ne_bytes();
        let good = tcp_v4(full);
        assert!(tcp_checksum_holds(pseudo, sum(&good), full));
        let partial = pseudo.to_ne_bytes();
        assert!(tcp_checksum_holds(pseudo, sum(&tcp_v4(partial)), partial));
        let mut corrupt = good.clone();
        corrupt[19] ^= 0x40;
        assert!(!tcp_checksum_holds(pseudo, sum(&corrupt), full));
        let elsewhere = [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let moved = pseudo_header(Family::V4, &elsewhere, &dst, good.len() as u32);
        assert!(
            !tcp_checksum_holds(moved, sum(&good), full),
            "the addresses are covered"
        );
    }

    #[test]
    fn an_ipv4_header_holds_only_with_its_checksum() {
        let mut header = [
            0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 19, 7, 9, 198, 18, 0, 1,
        ];
        let check = !fold(sum(&header));
        header[10..12].copy_from_slice(&check.to_ne_bytes());
        assert!(ipv4_header_holds(sum(&header)));
        header[8] = 63;
        assert!(!ipv4_header_holds(sum(&header)));
    }
}
