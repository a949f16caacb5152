//! The sockets of the transparent DNS proxy: one listener the tc program
//! assigns pods' queries to (`bpf_sk_assign`), which learns each query's
//! original destination from `IP_ORIGDSTADDR`; and, per DNS server
//! address, a socket bound to that address (`IP_TRANSPARENT`) so that
//! answers reach the pod from the server it asked.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// A UDP socket with `IP_TRANSPARENT` bound to `addr`, non-blocking, in the
/// calling thread's network namespace. `orig_dst`: also ask for each
/// datagram's original destination.
pub fn bind_transparent_udp(addr: SocketAddr, orig_dst: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_ip_transparent_v4(true)?;
    if orig_dst {
        set_recv_orig_dst(&socket)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn set_recv_orig_dst(socket: &Socket) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVORIGDSTADDR,
            std::ptr::from_ref(&on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One datagram: its payload length, who sent it, where it was going.
pub struct Received {
    pub len: usize,
    pub from: SocketAddrV4,
    /// `None` when the kernel gave no original destination (a datagram
    /// sent to the listener's own address).
    pub orig_dst: Option<SocketAddrV4>,
}

/// Reads one datagram from a listener made by [`bind_transparent_udp`]
/// with `orig_dst`.
pub async fn recv_with_orig_dst(
    socket: &tokio::net::UdpSocket,
    buf: &mut [u8],
) -> io::Result<Received> {
    let fd = socket.as_raw_fd();
    socket
        .async_io(tokio::io::Interest::READABLE, || recvmsg(fd, buf))
        .await
}

fn recvmsg(fd: libc::c_int, buf: &mut [u8]) -> io::Result<Received> {
    let mut from = MaybeUninit::<libc::sockaddr_in>::zeroed();
    // Room for one IP_ORIGDSTADDR (a sockaddr_in) and slack.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the
    // call, and lengths are those of the buffers they point to.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = from.as_mut_ptr().cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: fd is a socket owned by the caller; msg is initialized above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `from` (msg_namelen says how much; an
    // AF_INET socket reports a sockaddr_in).
    let from = unsafe { from.assume_init() };
    let from = sockaddr_v4(&from);
    let mut orig_dst = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_IP && (*cmsg).cmsg_type == libc::IP_ORIGDSTADDR {
                let data = libc::CMSG_DATA(cmsg).cast::<libc::sockaddr_in>();
                orig_dst = Some(sockaddr_v4(&std::ptr::read_unaligned(data)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        len: usize::try_from(n).unwrap_or(0),
        from,
        orig_dst,
    })
}

fn sockaddr_v4(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}
