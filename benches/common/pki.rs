//! The benches' TLS identity.

/// A throwaway CA and a `localhost` certificate, made by `openssl`.
pub fn pki() -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().ok()?;
    let ok = std::process::Command::new("sh")
        .arg("-ec")
        .arg(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout ca.key -out ca.pem -subj /CN=bench-ca -days 1 \
               -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
               -keyout leaf.key -out leaf.csr -subj /CN=localhost
             printf 'subjectAltName=DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > ext
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
               -out leaf.pem -days 1 -extfile ext",
        )
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then_some(dir)
}
