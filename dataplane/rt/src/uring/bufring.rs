//! The provided-buffer ring: receives pick a buffer only when data arrives, so an idle
//! connection with a receive in flight holds no memory.

use std::cell::Cell;
use std::io;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;

use crate::RuntimeStats;

/// Layout of `struct io_uring_buf`; entry 0's `resv` field is the ring's tail.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

pub(crate) struct BufRing {
    ring: NonNull<RawBuf>,
    ring_bytes: usize,
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    entries: u16,
    pub(crate) buf_size: usize,
    pub(crate) bgid: u16,
    tail: Cell<u16>,
    in_use: Cell<u64>,
    stats: Arc<RuntimeStats>,
    /// Set when the kernel may still touch the memory: Drop then leaks it instead of unmapping.
    pub(crate) leak: Cell<bool>,
}

fn mmap(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: anonymous private mapping with no address hint; checked for MAP_FAILED below.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

fn munmap(p: NonNull<u8>, len: usize) {
    // SAFETY: `p`/`len` describe a mapping made by `mmap` above and not unmapped yet.
    unsafe { libc::munmap(p.as_ptr().cast(), len) };
}

impl BufRing {
    /// Maps and registers `entries` buffers of `buf_size` bytes as buffer group `bgid`.
    pub(crate) fn new(
        submitter: &Submitter<'_>,
        entries: u16,
        buf_size: usize,
        bgid: u16,
        stats: &Arc<RuntimeStats>,
    ) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffers must be a power of two <= 32768",
            ));
        }
        if buf_size == 0 || u32::try_from(buf_size).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffer_size out of range",
            ));
        }
        let ring_bytes = (usize::from(entries) * size_of::<RawBuf>()).next_multiple_of(4096);
        let bufs_bytes = usize::from(entries) * buf_size;
        let ring = mmap(ring_bytes)?.cast::<RawBuf>();
        let bufs = match mmap(bufs_bytes) {
            Ok(b) => b,
            Err(e) => {
                munmap(ring.cast(), ring_bytes);
                return Err(e);
            }
        };
        let this = BufRing {
            ring,
            ring_bytes,
            bufs,
            bufs_bytes,
            entries,
            buf_size,
            bgid,
            tail: Cell::new(0),
            in_use: Cell::new(entries.into()),
            stats: stats.clone(),
            leak: Cell::new(false),
        };
        for bid in 0..entries {
            this.push(bid);
        }
        this.publish();
        // SAFETY: the ring memory stays mapped until this BufRing drops, which happens after the
        // group is unregistered (Driver::drop) or is leaked if that cannot be guaranteed.
        unsafe {
            submitter.register_buf_ring_with_flags(ring.as_ptr() as u64, entries, bgid, 0)?;
        }
        Ok(this)
    }

    /// Writes buffer `bid` at the tail slot, not yet visible to the kernel.
    fn push(&self, bid: u16) {
        let idx = usize::from(self.tail.get() & (self.entries - 1));
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * self.buf_size as u64;
        // SAFETY: idx < entries, inside the mapping. The kernel reads only slots between its
        // head and our published tail; this slot is past the tail. Fields are written through
        // raw pointers so entry 0's tail field (read by the kernel) is never covered by a &mut.
        unsafe {
            let e = self.ring.as_ptr().add(idx);
            ptr::addr_of_mut!((*e).addr).write(addr);
            ptr::addr_of_mut!((*e).len).write(self.buf_size as u32);
            ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail.set(self.tail.get().wrapping_add(1));
        self.in_use.set(self.in_use.get() - 1);
    }

    /// Makes pushed buffers visible to the kernel.
    fn publish(&self) {
        // SAFETY: `resv` of entry 0 is the u16 tail shared with the kernel, 2-byte aligned and
        // inside the mapping; it is only ever accessed atomically from this side.
        let tail = unsafe { AtomicU16::from_ptr(ptr::addr_of_mut!((*self.ring.as_ptr()).resv)) };
        tail.store(self.tail.get(), Ordering::Release);
        RuntimeStats::set(&self.stats.recv_buffers_in_use, self.in_use.get());
    }

    /// Records that the kernel handed buffer `bid` to a completion.
    pub(crate) fn taken(&self, bid: u16) {
        debug_assert!(bid < self.entries);
        self.in_use.set(self.in_use.get() + 1);
        RuntimeStats::set(&self.stats.recv_buffers_in_use, self.in_use.get());
    }

    /// Gives buffer `bid` back to the kernel.
    pub(crate) fn recycle(&self, bid: u16) {
        if bid >= self.entries {
            return;
        }
        self.push(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid`.
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let bid = bid.min(self.entries - 1);
        let len = len.min(self.buf_size);
        // SAFETY: the range lies inside the mapping. The caller holds `bid` from a completion
        // and has not recycled it, so the kernel no longer writes it and no other owner exists.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.as_ptr().add(usize::from(bid) * self.buf_size),
                len,
            )
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak.get() {
            return;
        }
        munmap(self.ring.cast(), self.ring_bytes);
        munmap(self.bufs, self.bufs_bytes);
    }
}
