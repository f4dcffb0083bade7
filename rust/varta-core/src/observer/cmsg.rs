//! Control messages of a received Unix datagram (`docs/observer.md#credentials`):
//! the sender's credentials (`SCM_CREDENTIALS`), descriptors it passed
//! (`SCM_RIGHTS`, closed at once) and its pidfd (`SCM_PIDFD`), read from the
//! control buffer each [`super::listener::UdsListener`] receive slot owns.

use super::listener::RECV_BUF_LEN;
use crate::frame::FRAME_LEN;
use std::mem::size_of;
use std::os::fd::RawFd;

/// Descriptors a single datagram may pass before its control data truncates
/// (the kernel discards the excess and sets `MSG_CTRUNC`).
pub const MAX_PASSED_FDS: usize = 16;

/// `SO_PASSPIDFD` (Linux ≥ 6.5). The `libc` crate (0.2.191 in Cargo.lock)
/// has it only in its private uapi tables and `nix` 0.29 not at all, so it is
/// defined here: 76 in asm-generic (x86, arm, riscv, powerpc, s390, mips…),
/// 0x55 on sparc.
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
pub const SO_PASSPIDFD: libc::c_int = 76;
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
pub const SO_PASSPIDFD: libc::c_int = 0x55;
/// `SCM_PIDFD` (Linux ≥ 6.5, every arch; not exported by `libc` 0.2.191).
pub const SCM_PIDFD: libc::c_int = 0x04;

const fn cmsg_space(len: usize) -> usize {
    // SAFETY: pure arithmetic on a length.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

/// Credentials, up to [`MAX_PASSED_FDS`] passed descriptors and one pidfd.
/// The kernel writes them in that order (`scm_recv_unix`), so the pidfd is
/// last and a sender passing too many descriptors truncates it away too.
pub(crate) const CMSG_BUF_LEN: usize = cmsg_space(size_of::<libc::ucred>())
    + cmsg_space(MAX_PASSED_FDS * size_of::<RawFd>())
    + cmsg_space(size_of::<RawFd>());

#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_BUF_LEN]);

/// Kernel-attested identity of a datagram's sender (`SCM_CREDENTIALS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The sender's pidfd for one datagram (`SCM_PIDFD`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SenderPidfd {
    /// The listener does not receive pidfds (kernel without `SO_PASSPIDFD`,
    /// or not a Unix listener): `/proc` identity is read unchecked, as
    /// before pidfds existed.
    #[default]
    NotRequested,
    /// A pidfd of the sending process, owned by the listener and open until
    /// the batch is released.
    Fd(RawFd),
    /// Pidfds are on but the kernel could not hand one over for this
    /// datagram (an error value in `SCM_PIDFD`, e.g. a sender reaped before
    /// the receive on kernels < 6.16, or our descriptor table full): the
    /// sender cannot be vouched for, so its `/proc` identity is not trusted.
    Unavailable,
}

/// What [`parse_message`] read from one message.
#[derive(Clone, Copy, Default)]
pub(crate) struct Meta {
    pub(crate) len: u32,
    pub(crate) overlong: bool,
    pub(crate) ctrunc: bool,
    pub(crate) creds: Option<PeerCred>,
    pub(crate) fds_closed: u32,
    pub(crate) pidfd: SenderPidfd,
}

/// Read credentials and the sender's pidfd and close passed descriptors
/// from one received message. With `pidfd_mode` a message without a usable
/// `SCM_PIDFD` is marked [`SenderPidfd::Unavailable`] (fail closed).
pub(crate) fn parse_message(hdr: &libc::mmsghdr, pidfd_mode: bool) -> Meta {
    let msg = &hdr.msg_hdr;
    let flags = msg.msg_flags;
    let mut meta = Meta {
        len: hdr.msg_len.min(RECV_BUF_LEN as u32),
        overlong: flags & libc::MSG_TRUNC != 0 || hdr.msg_len as usize > FRAME_LEN,
        ctrunc: flags & libc::MSG_CTRUNC != 0,
        creds: None,
        fds_closed: 0,
        pidfd: if pidfd_mode {
            SenderPidfd::Unavailable
        } else {
            SenderPidfd::NotRequested
        },
    };
    if msg.msg_control.is_null() || msg.msg_controllen < size_of::<libc::cmsghdr>() as _ {
        return meta;
    }
    // SAFETY: the kernel filled `msg_control` with `msg_controllen` bytes of
    // well-formed control messages; the CMSG_* helpers stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let level = (*c).cmsg_level;
            let ty = (*c).cmsg_type;
            let data = libc::CMSG_DATA(c);
            let payload = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if level == libc::SOL_SOCKET && ty == libc::SCM_CREDENTIALS {
                if payload >= size_of::<libc::ucred>() {
                    let uc: libc::ucred = std::ptr::read_unaligned(data.cast());
                    meta.creds = Some(PeerCred {
                        pid: uc.pid as u32,
                        uid: uc.uid,
                        gid: uc.gid,
                    });
                }
            } else if level == libc::SOL_SOCKET && ty == libc::SCM_RIGHTS {
                let n = payload / size_of::<RawFd>();
                for k in 0..n {
                    let fd: RawFd =
                        std::ptr::read_unaligned(data.add(k * size_of::<RawFd>()).cast());
                    if fd >= 0 {
                        libc::close(fd);
                        meta.fds_closed += 1;
                    }
                }
            } else if level == libc::SOL_SOCKET && ty == SCM_PIDFD && payload >= size_of::<RawFd>()
            {
                // A negative value is the kernel's error for a pidfd it
                // could not make; the datagram stays `Unavailable`.
                let fd: RawFd = std::ptr::read_unaligned(data.cast());
                if fd >= 0 {
                    if pidfd_mode && meta.pidfd == SenderPidfd::Unavailable {
                        meta.pidfd = SenderPidfd::Fd(fd);
                    } else {
                        // Not asked for, or a second one: never kept.
                        libc::close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    meta
}
