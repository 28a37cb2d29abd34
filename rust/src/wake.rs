//! The eventfd Python selects on: readable while take() or logs() have something.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    pub fn new() -> io::Result<Self> {
        // Non-blocking so draining never blocks; close-on-exec so workers
        // spawned later do not inherit it.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Wake {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the fd readable. Cannot fail short of counter overflow, which
    /// would still leave it readable, so the result is ignored.
    pub fn signal(&self) {
        let one: u64 = 1;
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Makes the fd unreadable: one read resets an eventfd counter; EAGAIN
    /// (already reset) is fine.
    pub fn reset(&self) {
        let mut buf: u64 = 0;
        unsafe { libc::read(self.fd(), (&mut buf as *mut u64).cast(), 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(w: &Wake) -> bool {
        let mut p = libc::pollfd {
            fd: w.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn signal_and_reset() {
        let w = Wake::new().unwrap();
        assert!(!readable(&w));
        w.signal();
        w.signal();
        assert!(readable(&w));
        w.reset();
        assert!(!readable(&w));
        w.reset();
        assert!(!readable(&w));
    }
}
