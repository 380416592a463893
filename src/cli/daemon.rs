//! `-d`: detaching from the terminal as nutcracker does.

/// Become a daemon as nutcracker does: fork, new session, fork again, `/` as working
/// directory, standard streams on /dev/null. Must run before any thread is started.
pub fn daemonize() -> Result<(), String> {
    // SAFETY: called before the runtime starts any thread; only async-signal-safe calls
    // happen between fork and the parent's exit.
    unsafe {
        match libc::fork() {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {}
            _ => libc::_exit(0),
        }
        if libc::setsid() == -1 {
            return Err(format!("setsid: {}", std::io::Error::last_os_error()));
        }
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        match libc::fork() {
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {}
            _ => libc::_exit(0),
        }
        libc::umask(0);
        let root = c"/";
        libc::chdir(root.as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
    Ok(())
}
