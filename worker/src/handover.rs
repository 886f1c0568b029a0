//! Big buffers from normalizer processes to the worker by file descriptor.
//!
//! A normalizer process's stdout is a Unix socket. For a frame of rows
//! whose blobs (video segments, page renders) are big, the child writes the
//! blobs into a memfd, seals it against any further change, and passes the
//! descriptor along with the frame's first byte (`SCM_RIGHTS`). The worker
//! maps it read-only and hands the mapping on as the rows' bytes: no copy
//! through the pipe on either side, and the child never waits for the
//! worker to drain a pipe before it takes its next file.
//!
//! The libc calls are here, each with what makes it sound; the rest of the
//! crate sees `OwnedFd`s and `Bytes`.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use bytes::Bytes;

/// Seals that make a memfd's bytes fixed: no write, no shrink, no grow,
/// no seal removed.
const FIXED: libc::c_int = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

/// A new, empty memfd to write into (its offset moves as `std::fs::File`'s
/// does); [`seal`] fixes its bytes once they are written.
pub fn memfd() -> std::io::Result<std::fs::File> {
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let raw = unsafe { libc::memfd_create(c"sluice-rows".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor just made for us and owned by nobody else.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) }))
}

/// Seal a memfd from [`memfd`] so that nobody (this process included, and
/// through any other descriptor of it) can change, shrink or grow it any
/// more. Fails while a writable shared mapping of it exists.
pub fn seal(file: std::fs::File) -> std::io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own; the result is checked.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, FIXED) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file.into())
}

/// A memfd holding `parts` one after another, sealed.
pub fn sealed_memfd(parts: &[&[u8]]) -> std::io::Result<OwnedFd> {
    let mut file = memfd()?;
    for part in parts {
        file.write_all(part)?;
    }
    seal(file)
}

/// Room for the control message of one `recvmsg`: a few descriptors (one
/// comes with each frame that hands over a buffer), aligned as `cmsghdr`.
type Control = [u64; 8];

/// Send the byte `byte` on the stream socket `sock` with `fd` attached.
/// The receiver gets the descriptor with the `recvmsg` that reads the byte.
pub fn send_with_fd(sock: BorrowedFd<'_>, byte: u8, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut data = [byte];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: 1 };
    let mut control: Control = [0; 8];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    debug_assert!(space <= size_of::<Control>());
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `control`, aligned for cmsghdr and big
    // enough for one header and one descriptor (CMSG_SPACE), so
    // CMSG_FIRSTHDR is non-null and its data has room for the descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
    }
    loop {
        // SAFETY: msg and what it points at (iov, data, control) live through the call.
        let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match sent {
            1 => return Ok(()),
            0 => return Err(std::io::Error::other("nothing sent")),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// One `recvmsg` on the nonblocking stream socket `sock` into `buf`;
/// descriptors that came with the bytes go to the back of `fds`.
/// `WouldBlock` when nothing is there yet; `Ok(0)` at end of stream.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> std::io::Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control: Control = [0; 8];
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<Control>() as _;
    // SAFETY: msg points at `buf` (through iov) and `control`, both alive and
    // writable for the lengths given.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `control` with msg_controllen bytes of
    // well-formed control messages; CMSG_FIRSTHDR / CMSG_NXTHDR walk them
    // and stop (null) at its end. An SCM_RIGHTS message carries
    // (cmsg_len - CMSG_LEN(0)) / sizeof(int) descriptors, each now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push_back(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("descriptors from the normalizer process were lost (control data truncated)"));
    }
    Ok(n as usize)
}

/// A read-only shared mapping of a sealed memfd.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and its memfd is sealed against writes
// and shrinking (checked before mapping): the bytes never change and stay
// mapped until drop, so sharing them across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `len` bytes at `ptr` stay mapped, readable and unchanged
        // until drop.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map_sealed`; no slice
        // of it outlives this (Bytes keeps the owner alive while sliced).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The first `len` bytes of the memfd `fd`, mapped without a copy, its
/// pages mapped in at once (they are about to be read). Refused unless it
/// is sealed against writes and shrinking (so its bytes cannot change or
/// vanish under the mapping) and holds at least `len` bytes.
pub fn map_sealed(fd: OwnedFd, len: usize) -> std::io::Result<Bytes> {
    map(fd, len, libc::MAP_POPULATE)
}

/// [`map_sealed`], but pages are mapped in only if they are read: for a
/// memfd this process made and will most likely only pass on.
pub fn map_sealed_lazily(fd: OwnedFd, len: usize) -> std::io::Result<Bytes> {
    map(fd, len, 0)
}

fn map(fd: OwnedFd, len: usize, flags: libc::c_int) -> std::io::Result<Bytes> {
    // SAFETY: fcntl on a descriptor we own; the result is checked.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK;
    if seals < 0 || seals & needed != needed {
        return Err(std::io::Error::other("the normalizer process handed over a buffer that is not sealed"));
    }
    let file = std::fs::File::from(fd);
    if file.metadata()?.len() < len as u64 {
        return Err(std::io::Error::other("the normalizer process handed over a buffer shorter than its rows"));
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: a fresh read-only shared mapping of `len` bytes of a file
    // that holds at least that many and cannot shrink; the result is
    // checked. It stays valid after the descriptor closes.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED | flags, file.as_raw_fd(), 0) };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap gave a null address"))?;
    Ok(Bytes::from_owner(Mapping { ptr, len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_memfd_crosses_a_socket_and_maps_to_its_bytes() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = sealed_memfd(&[b"segment one|", b"thumb"]).unwrap();
        send_with_fd(std::os::fd::AsFd::as_fd(&a), 7, std::os::fd::AsFd::as_fd(&fd)).unwrap();
        drop(fd);
        (&a).write_all(b"rest").unwrap();
        b.set_nonblocking(true).unwrap();
        let (mut fds, mut buf) = (VecDeque::new(), [0u8; 16]);
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        // The byte the descriptor came with ends the read.
        assert_eq!(&buf[..n], &[7]);
        assert_eq!(fds.len(), 1);
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"rest");
        let bytes = map_sealed(fds.pop_front().unwrap(), 17).unwrap();
        assert_eq!(&bytes[..], b"segment one|thumb");
        let tail = bytes.slice(12..);
        drop(bytes);
        assert_eq!(&tail[..], b"thumb", "a slice keeps the mapping");
        let e = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn buffers_that_could_change_or_are_short_are_refused() {
        let file = tempfile::tempfile().unwrap();
        (&file).write_all(b"not a memfd").unwrap();
        assert!(map_sealed(file.into(), 4).unwrap_err().to_string().contains("not sealed"));
        let sealed = sealed_memfd(&[b"abc"]).unwrap();
        assert!(map_sealed(sealed, 4).unwrap_err().to_string().contains("shorter"));
        let sealed = sealed_memfd(&[b"abc"]).unwrap();
        let mut file = std::fs::File::from(sealed.try_clone().unwrap());
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
        assert!(file.set_len(1).is_err(), "sealed against shrinking");
        assert_eq!(&map_sealed(sealed, 3).unwrap()[..], b"abc");
    }
}
