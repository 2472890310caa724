//! Headless Chromium for browser tests (installed by tools/install-deps).

use std::process::{Child, Command};

/// The Chromium binary on PATH.
pub fn chromium() -> &'static str {
    for bin in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return bin;
        }
    }
    panic!("no Chromium on PATH: run tools/install-deps");
}

/// A browser process and its profile directory; killed and removed when dropped.
pub struct Browser(pub Child, pub std::path::PathBuf);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}
