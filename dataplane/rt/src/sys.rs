//! Thin wrappers over the few raw syscalls the drivers make themselves.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking, close-on-exec eventfd used to wake a runtime from another thread.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative return is a fresh fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to the eventfd counter. EAGAIN (counter saturated) already means "wake up".
pub(crate) fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64 to an fd we own.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
}

/// Resets the eventfd counter (non-blocking; EAGAIN when already zero).
pub(crate) fn eventfd_drain(fd: &OwnedFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live local u64.
    let _ = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
}

/// One non-blocking `send`, without SIGPIPE.
pub(crate) fn send(fd: RawFd, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice; the kernel reads at most `buf.len()` bytes from it.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `sendmsg` of several slices, without SIGPIPE.
pub(crate) fn send_vectored(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads them.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: `msg` points at `bufs`, which outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One `recv` into possibly uninitialised memory.
pub(crate) fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice; the kernel writes at most `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking `recv` into possibly uninitialised memory.
pub(crate) fn recv_nonblocking(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable slice; the kernel writes at most `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One non-blocking `sendmsg` of several slices, without SIGPIPE.
pub(crate) fn send_vectored_nonblocking(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; the kernel only reads them.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: `msg` points at `bufs`, which outlive the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Peer address of an accepted socket.
pub(crate) fn peer_addr(fd: &socket2::Socket) -> io::Result<std::net::SocketAddr> {
    fd.peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("peer is not an IP socket"))
}

/// Error for operations on a runtime that has shut down.
pub(crate) fn shut_down() -> io::Error {
    io::Error::other("zmesh-rt runtime has shut down")
}

/// Error for IO objects created on a thread without a runtime.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::other("no zmesh-rt runtime on this thread")
}

/// Heap memory glibc may keep free at the top of an arena before returning it to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_FREE_HEAP: libc::c_int = 64 << 20;
/// Allocations at least this large get their own mapping (and are unmapped when freed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const OWN_MAPPING_FROM: libc::c_int = 8 << 20;

/// Stops glibc from handing freed buffers back to the kernel after every burst.
///
/// A bulk tunnel frees and re-allocates buffers of 64 KiB–1 MiB all the time (read buffers,
/// HTTP/2 frames). With glibc's defaults the shard arenas trim their top (`madvise`) and
/// large blocks get their own `mmap`, so the next allocation page-faults and the kernel zeroes
/// fresh pages: measured at ~19% of a loaded proxy's CPU, and 3.5 → 2.2 CPU-s per GB when
/// turned off. The price is that memory freed after a burst stays in the process (up to
/// [`KEEP_FREE_HEAP`] per arena). Process-wide and idempotent; other allocators ignore it.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt takes two integers and only changes allocator parameters; an
            // unsupported parameter returns 0, which we ignore (the defaults then stay).
            unsafe {
                libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREE_HEAP);
                libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
            }
        });
    }
}
