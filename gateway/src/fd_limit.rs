//! The process's open-file limit (`RLIMIT_NOFILE`). Each client connection, upstream connection
//! and health check holds a file descriptor; the soft limit is often 1024 (or less in
//! containers) while the hard limit allows far more, and running out makes accept() and every
//! upstream connect fail with EMFILE.

/// The current soft limit, `None` if it cannot be read (or is unlimited).
pub fn soft() -> Option<u64> {
    let lim = read().ok()?;
    (lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

fn read() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given, which lives on this stack frame.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// Raises the soft limit to the hard limit and logs both.
pub fn raise() {
    let mut lim = match read() {
        Ok(lim) => lim,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            return;
        }
    };
    let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
    // An unlimited hard limit is not a valid soft limit for NOFILE: the kernel caps at nr_open.
    let target = if hard == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if soft >= target {
        tracing::info!(
            soft,
            hard,
            "RLIMIT_NOFILE: soft limit {soft} already at the hard limit {hard}"
        );
        return;
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(soft, hard, error = %e, "RLIMIT_NOFILE: cannot raise the soft limit {soft} to {target}");
        return;
    }
    tracing::info!(
        soft_before = soft,
        soft = target,
        hard,
        "RLIMIT_NOFILE: soft limit raised from {soft} to {target} (hard limit {hard})"
    );
}
