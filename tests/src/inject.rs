//! Sending hand-built frames out of an interface (AF_PACKET), as a spoofing
//! client would: the frames cross the lab's veth pair and nothing else.

use std::{io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use anyhow::{Context, Result, bail};

use crate::lab::Netns;

/// An AF_PACKET socket bound to one interface of one namespace.
pub struct Injector {
    socket: OwnedFd,
}

impl Injector {
    pub fn open(ns: &Netns, iface: &str) -> Result<Self> {
        let iface = iface.to_string();
        ns.enter(move || open_packet_socket(&iface))?
    }

    /// Sends one complete Ethernet frame. When the interface's queue is full
    /// (ENOBUFS: sending faster than the receiver drains), waits and retries.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        let mut sent;
        loop {
            // SAFETY: send on a socket we own, from a valid buffer.
            sent = unsafe { libc::send(self.socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if sent >= 0 {
                break;
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(error).context("sending a frame");
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        if sent as usize != frame.len() {
            bail!("short send: {sent} of {} bytes", frame.len());
        }
        Ok(())
    }
}

fn open_packet_socket(iface: &str) -> Result<Injector> {
    let index = crate::lab::if_index(iface)?;
    // Protocol 0: send only, receive nothing.
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: fd is a fresh socket we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: bind with a properly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("binding to {iface}"));
    }
    Ok(Injector { socket })
}
