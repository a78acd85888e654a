//! The packet buffer as a [`ByteView`] for the common parser.

use tcp_guard_common::packet::{ByteView, Header, IP_MAX_LEN};

/// `value`, unknown to the optimiser, so that bounds checks on it survive
/// for the verifier to see. A volatile stack round trip: the verifier tracks
/// spilled scalars exactly (an empty asm block would break BTF line info).
#[inline(always)]
pub fn opaque(value: usize) -> usize {
    let slot = value;
    // SAFETY: reads a local that is initialised and properly aligned.
    unsafe { core::ptr::read_volatile(&slot) }
}

/// The bytes between an XDP context's `data` and `data_end`: the whole frame.
#[derive(Clone, Copy)]
pub struct PacketBytes {
    start: usize,
    end: usize,
}

impl PacketBytes {
    #[inline(always)]
    pub fn new(start: usize, end: usize) -> Self {
        PacketBytes { start, end }
    }

    /// `start + offset`, with the offset hidden from the optimiser: LLVM
    /// otherwise proves some bounds checks redundant (e.g. the TCP header
    /// check, from the IP total length) and deletes them, and the verifier,
    /// which cannot follow that proof, rejects the read.
    #[inline(always)]
    fn at(&self, offset: usize) -> usize {
        self.start + opaque(offset)
    }
}

impl ByteView for PacketBytes {
    #[inline(always)]
    fn contains(&self, offset: usize, len: usize) -> bool {
        self.at(offset) + len <= self.end
    }

    #[inline(always)]
    fn read<T: Header>(&self, offset: usize) -> Option<T> {
        // Compared as pointers, so the verifier learns the packet's range.
        let at = self.at(offset);
        if at + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: bounds checked above; the read is unaligned and Header
        // types accept any bytes.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }
}

/// A socket buffer of `len` bytes, of which `bytes` is the linear part
/// (TC): a segment the host's stack hands over whole (GSO, up to 64 KiB,
/// or more with BIG TCP) keeps its payload in pages the program cannot
/// read, but its headers, which are all the parser reads, lie in the
/// linear part. (A type of its own: a length field in `PacketBytes` took
/// the XDP program's frame, and with it the chain through the tracker,
/// past 512 bytes.)
#[derive(Clone, Copy)]
pub struct SkbBytes {
    pub bytes: PacketBytes,
    len: usize,
}

impl SkbBytes {
    #[inline(always)]
    pub fn new(start: usize, end: usize, len: usize) -> Self {
        SkbBytes {
            bytes: PacketBytes::new(start, end),
            len,
        }
    }
}

impl ByteView for SkbBytes {
    /// Against the packet's length, not the readable part's: this checks
    /// what headers say of lengths, and every read checks its own bounds.
    #[inline(always)]
    fn contains(&self, offset: usize, len: usize) -> bool {
        opaque(offset) + len <= self.len
    }

    #[inline(always)]
    fn read<T: Header>(&self, offset: usize) -> Option<T> {
        self.bytes.read(offset)
    }

    #[inline(always)]
    fn big_len(&self, offset: usize) -> Option<usize> {
        self.len.checked_sub(offset).filter(|&len| len > IP_MAX_LEN)
    }
}
