//! Shared fixtures for the integration tests: a private keyring folder and
//! the real `coffer` binary.
#![allow(dead_code)]

pub mod backend;
pub mod tree;
#[cfg(feature = "vault")]
pub mod vault;

use assert_cmd::Command;
use std::path::{Path, PathBuf};

/// tests/vectors/: the format's known-answer files.
pub fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// A temp folder holding a keyring, a recovery key file and a password file.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn keyring(&self) -> PathBuf {
        self.path("keyring.json")
    }

    pub fn recovery_key(&self) -> PathBuf {
        self.path("recovery.txt")
    }

    /// `coffer` with this home's keyring, no terminal, clean environment.
    pub fn coffer(&self) -> Command {
        let mut c = Command::cargo_bin("coffer").expect("binary built");
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("COFFER_KEYRING", self.keyring())
            .current_dir(self.dir.path());
        c
    }

    /// `coffer init` writing the recovery key to recovery.txt.
    pub fn init(&self) {
        self.coffer()
            .args(["init", "--recovery-key-out"])
            .arg(self.recovery_key())
            .assert()
            .success();
    }

    /// Write `text` to `name` in this home and return its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A home whose keyring is docs/format.md §6's version 1 vector, with
    /// its recovery key in recovery.txt.
    pub fn with_v1_vector_keyring() -> Self {
        let h = Self::new();
        std::fs::copy(vectors().join("keyring-v1.json"), h.keyring()).unwrap();
        std::fs::copy(vectors().join("recovery-v1.txt"), h.recovery_key()).unwrap();
        h
    }

    /// `coffer export --seal-only --sealer SEALER -o OUT`, unlocking with
    /// the recovery key; more arguments may follow.
    pub fn export_seal_only(&self, sealer: &str, out: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = self.coffer();
        c.args(["export", "--seal-only", "--sealer", sealer, "-o"])
            .arg(out)
            .args(["--recovery-key-file", "recovery.txt"]);
        c
    }

    /// Enroll a password slot (unlocking with the recovery key).
    pub fn enroll_password(&self, password: &str) {
        let f = self.write("new-password.txt", password);
        self.coffer()
            .args(["enroll", "password", "--new-password-file"])
            .arg(&f)
            .arg("--recovery-key-file")
            .arg(self.recovery_key())
            .assert()
            .success();
    }

    pub fn keyring_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.keyring()).unwrap()).unwrap()
    }

    /// Replace the keyring with `kr`, as an attacker or a bad editor would.
    pub fn put_keyring_json(&self, kr: &serde_json::Value) {
        std::fs::write(self.keyring(), serde_json::to_vec_pretty(kr).unwrap()).unwrap();
    }

    /// Seal `input` as a stream into `name` with the recovery key; return
    /// the archive's bytes.
    pub fn seal_stream(&self, input: &[u8], name: &str) -> Vec<u8> {
        self.coffer()
            .args([
                "seal",
                "-",
                "-o",
                name,
                "--recovery-key-file",
                "recovery.txt",
            ])
            .write_stdin(input)
            .assert()
            .success();
        std::fs::read(self.path(name)).unwrap()
    }

    /// Seal a hand-made tar payload with this home's valid key, as an
    /// attacker who knows the key (or a buggy tar writer) could.
    pub fn seal_tar_payload(&self, tar_bytes: &[u8]) -> Vec<u8> {
        use coffer::archive::header::{DEFAULT_CHUNK, FLAG_TAR, Header};
        use coffer::archive::stream::StreamWriter;
        use coffer::keyring::KeyringFile;
        use coffer::slot::{FactorKind, Factors, unlock};
        use std::io::Write;
        let kr = KeyringFile::new(self.keyring()).load().unwrap();
        let factors = Factors::new().with(FactorKind::RecoveryKey, self.recovery_key_text().into());
        let (bk, _) = unlock(
            &kr.slots,
            None,
            &factors,
            &coffer::ui::NonInteractive::default(),
        )
        .unwrap();
        let sealer = coffer::sealing::Sealer::owner(&bk);
        let (header, payload_key) =
            Header::seal(&sealer, FLAG_TAR, DEFAULT_CHUNK, kr.slots.clone());
        let mut out = header.to_bytes();
        let mut w = StreamWriter::new(payload_key, DEFAULT_CHUNK as usize, Vec::new()).unwrap();
        w.write_all(tar_bytes).unwrap();
        out.extend(w.finish().unwrap());
        out
    }

    pub fn recovery_key_text(&self) -> String {
        std::fs::read_to_string(self.recovery_key())
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// Run `coffer ARGS` on a pseudo-terminal (util-linux `script`), in
/// `home`, with `keyring` and the extra environment `env`, typing `answer`
/// at its prompt as a person would: whether it succeeded, and everything
/// it printed.
pub fn run_on_a_terminal<K, V>(
    home: &Home,
    keyring: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    args: &[std::ffi::OsString],
    answer: &str,
) -> (bool, String)
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let mut line = shell_quote(assert_cmd::cargo::cargo_bin("coffer").as_os_str());
    for s in args {
        line.push(' ');
        line.push_str(&shell_quote(s));
    }
    run_line_on_a_terminal(home, keyring, env, &line, answer)
}

/// A word for `sh`, single-quoted.
pub fn shell_quote(s: &std::ffi::OsStr) -> String {
    format!("'{}'", s.to_str().unwrap().replace('\'', r"'\''"))
}

/// [`run_on_a_terminal`] for a whole `sh` command line (pipes included):
/// the line runs with the pseudo-terminal as its controlling terminal, and
/// `answer` is typed at it.
pub fn run_line_on_a_terminal<K, V>(
    home: &Home,
    keyring: &Path,
    env: impl IntoIterator<Item = (K, V)>,
    line: &str,
    answer: &str,
) -> (bool, String)
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    use std::io::Write;
    let mut child = std::process::Command::new("script")
        .args(["-qec", line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.dir.path())
        .env("COFFER_KEYRING", keyring)
        .envs(env)
        .current_dir(home.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Unix permission bits of `p`.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file name in a folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Rewrite an archive's header as anyone who can write the storage can:
/// `edit` gets everything before the slot list (docs/format.md §4; in
/// version 2 the fixed part, the sealed file key and the sealer id, §8.8)
/// and the slot list. The MAC is left as it was; only the sealer's key
/// could recompute it.
pub fn rewrite_header(
    archive: &Path,
    edit: impl FnOnce(&mut Vec<u8>, &mut Vec<serde_json::Value>),
) {
    use coffer::archive::header::FIXED_LEN;
    use coffer::sealing::ENCAPSULATION_LEN;
    let bytes = std::fs::read(archive).unwrap();
    let len_at = FIXED_LEN - 4;
    let len = u32::from_be_bytes(bytes[len_at..FIXED_LEN].try_into().unwrap()) as usize;
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    let slots_at = if version >= 2 {
        let m = bytes[FIXED_LEN + ENCAPSULATION_LEN] as usize;
        FIXED_LEN + ENCAPSULATION_LEN + 1 + m
    } else {
        FIXED_LEN
    };
    let mut fixed = bytes[..slots_at].to_vec();
    let mut slots: Vec<serde_json::Value> =
        serde_json::from_slice(&bytes[slots_at..slots_at + len]).unwrap();
    edit(&mut fixed, &mut slots);
    let json = serde_json::to_vec(&slots).unwrap();
    fixed[len_at..FIXED_LEN].copy_from_slice(&(json.len() as u32).to_be_bytes());
    let mut out = fixed;
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[slots_at + len..]);
    std::fs::write(archive, out).unwrap();
}
