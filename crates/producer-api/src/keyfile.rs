//! The file a generated API key is written to: the log never holds a key,
//! so a gateway started without `API_KEYS` tells its user where to read one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Where a generated key is written for a gateway on `port`:
/// `$XDG_RUNTIME_DIR` (private to the user) when set, else the temp dir.
pub fn key_file_path(port: u16) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    dir.join(format!("producer-api-{port}.key"))
}

/// Writes a generated key to [`key_file_path`], readable by its owner only
/// (mode 0600). A file left by an earlier run on the same port is replaced;
/// the new file is created exclusively, so a planted symlink is refused
/// rather than followed.
pub fn write_key_file(key: &str, port: u16) -> std::io::Result<PathBuf> {
    let path = key_file_path(port);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
    file.write_all(key.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_private_and_replaces_an_old_one() {
        use std::os::unix::fs::PermissionsExt;
        // A privileged port, which no test server gets (they bind port 0,
        // so the kernel picks from the ephemeral range), different per
        // process so parallel runs do not share the file.
        let port = 1 + (std::process::id() % 1000) as u16;
        let path = write_key_file("dev-first", port).unwrap();
        let path_again = write_key_file("dev-second", port).unwrap();
        assert_eq!(path, path_again);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "dev-second\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(&path).unwrap();
    }
}
