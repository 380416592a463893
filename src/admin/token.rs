//! The admin API's token, safe by default: with no `--admin-token`, cutover makes a random
//! one at start and writes it to a file only its user can read, where `cutover ctl` finds
//! it from the admin address alone. `GET` calls (`/metrics`, `/status`) need no token;
//! every call that changes something does.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the token of the admin API on `admin` (`HOST:PORT`) is written by default: the
/// temporary directory, named by the port (`/tmp/cutover-admin-22223.token`).
pub fn default_path(admin: &str) -> PathBuf {
    let port = admin.rsplit(':').next().unwrap_or(admin);
    std::env::temp_dir().join(format!("cutover-admin-{port}.token"))
}

/// A new random token: 32 hex digits from the kernel's random source.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for the admin token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Write `token` to `path`, readable by this user only (mode 0600), replacing any file
/// there.
pub fn write(path: &Path, token: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{token}\n").as_bytes()))
        .map_err(|e| format!("cannot write the admin token to '{}': {e}", path.display()))
}

/// The token in `path`, if it can be read.
pub fn read(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = text.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_private_and_read_back() {
        let (a, b) = (generate().expect("token"), generate().expect("token"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.token");
        write(&path, &a).expect("write");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read(&path), Some(a));
        assert_eq!(
            default_path("127.0.0.1:22223")
                .file_name()
                .and_then(|n| n.to_str()),
            Some("cutover-admin-22223.token")
        );
    }
}
