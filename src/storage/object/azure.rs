//! Azure Blob Storage (`az://container/blob`): the client built from
//! `AZURE_*` settings, and the conditional completion `object_store` does
//! not make (`Put Block List` with `If-None-Match: *`).
//!
//! An upload is a set of uncommitted blocks; `Put Block List` makes them
//! the blob. Azure has no call that discards uncommitted blocks: an
//! aborted upload leaves them, never readable, until Azure collects them
//! (a week after the blob name's last write, docs/storage.md).

use super::{Built, Shared, Verdict, store_error};
use crate::error::{Error, Result};
use crate::storage::StoreOptions;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use object_store::azure::{AzureAuthorizer, AzureConfigKey, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{ClientOptions, HttpRequest};
use object_store::multipart::PartId;
use object_store::path::Path as ObjectPath;
use reqwest::Url;
use std::sync::Arc;

/// Azurite's account, and its well-known key (public, in Microsoft's
/// documentation): what `AZURE_STORAGE_USE_EMULATOR` reaches.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const EMULATOR_URL: &str = "http://127.0.0.1:10000";

/// The service version the completion asks for: `object_store`'s own
/// (0.14), set explicitly so that an unsigned request (`AZURE_SKIP_SIGNATURE`)
/// asks for it too.
const SERVICE_VERSION: &str = "2023-11-03";

/// What the conditional completion needs besides the client. Never derive
/// `Debug` here: `MicrosoftAzure`'s would print the account key or SAS.
pub(super) struct Completion {
    azure: Arc<MicrosoftAzure>,
    account: String,
    /// The blob's URL, built as `object_store` builds it.
    blob: Url,
    /// `AZURE_SKIP_SIGNATURE`: requests go unsigned.
    unsigned: bool,
    /// The blob's content type by its extension (`AZURE_DEFAULT_CONTENT_TYPE`
    /// and the like), which `object_store`'s own completion would set.
    content_type: Option<String>,
}

/// Names other Azure tools read that `object_store` does not, and the
/// ones it reads instead: with one of those set, the other tool's name is
/// ignored; alone, it is an error rather than silently unused.
const OTHER_NAMES: [(&str, &[&str]); 3] = [
    ("AZURE_STORAGE_ACCOUNT", &["AZURE_STORAGE_ACCOUNT_NAME"]),
    (
        "AZURE_STORAGE_KEY",
        &["AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_KEY"],
    ),
    (
        "AZURE_STORAGE_CONNECTION_STRING",
        &["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_USE_EMULATOR"],
    ),
];

/// The client for `container`, configured by the `AZURE_*` pairs of
/// `opts`. With `AZURE_STORAGE_USE_EMULATOR`, Azurite at
/// `AZURITE_BLOB_STORAGE_URL` (from `opts`, as everything else: this
/// library reads no environment) or its default address.
pub(super) fn build(
    container: &str,
    path: &ObjectPath,
    opts: &StoreOptions,
    url: &str,
) -> Result<Built> {
    let usage = |what: String| Error::Usage(format!("{url}: {what}"));
    let mut builder = MicrosoftAzureBuilder::new();
    let mut client = ClientOptions::new();
    let (mut emulator, mut emulator_url) = (false, None);
    for (k, v) in opts.pairs() {
        if k == "AZURITE_BLOB_STORAGE_URL" {
            emulator_url = Some(v.as_str());
            continue;
        }
        if let Some((_, ours)) = OTHER_NAMES.iter().find(|(name, _)| name == k) {
            if !opts.pairs().iter().any(|(o, _)| ours.contains(&o.as_str())) {
                return Err(usage(format!("{k} is not read: set {}", ours.join(" or "))));
            }
            continue;
        }
        let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() else {
            continue;
        };
        match key {
            AzureConfigKey::UseEmulator => {
                emulator = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" | "on" | "yes" | "y" => true,
                    "0" | "false" | "off" | "no" | "n" => false,
                    _ => return Err(usage(format!("{k}={v:?}: say true or false"))),
                };
                continue;
            }
            AzureConfigKey::Client(c) => client = client.with_config(c, v),
            _ => {}
        }
        builder = builder.with_config(key, v);
    }
    let value = |b: &MicrosoftAzureBuilder, key| b.get_config_value(&key).filter(|v| !v.is_empty());
    // Without AZURE_CREDENTIAL_TYPE, object_store takes the first complete
    // kind of credential it finds and ignores the rest: a write-only SAS
    // beside a pod's workload identity would go unused, the broader
    // identity used instead. One kind only, then, named as it was set.
    let set = |k: AzureConfigKey| value(&builder, k).is_some();
    let principal = set(AzureConfigKey::ClientId) && set(AzureConfigKey::AuthorityId);
    let named = |k: AzureConfigKey| {
        opts.pairs()
            .iter()
            .find(|(name, _)| name.to_ascii_lowercase().parse::<AzureConfigKey>().ok() == Some(k))
            .map_or_else(|| k.as_ref().to_ascii_uppercase(), |(name, _)| name.clone())
    };
    let kinds: Vec<String> = [
        (AzureConfigKey::Token, true),
        (AzureConfigKey::AccessKey, true),
        (AzureConfigKey::FederatedTokenFile, principal),
        (AzureConfigKey::ClientSecret, principal),
        (AzureConfigKey::SasKey, true),
    ]
    .into_iter()
    .filter(|(k, complete)| *complete && set(*k))
    .map(|(k, _)| named(k))
    .collect();
    let chosen = value(&builder, AzureConfigKey::CredentialType).is_some_and(|t| t != "auto");
    if kinds.len() > 1 && !chosen {
        return Err(usage(format!(
            "more than one kind of Azure credential is set ({}); only one would be used, the others silently ignored: unset all but the one meant, or choose with AZURE_CREDENTIAL_TYPE",
            kinds.join(", ")
        )));
    }
    if emulator {
        // As object_store's own emulator mode, but with the address given
        // here rather than read from the environment.
        let account =
            value(&builder, AzureConfigKey::AccountName).unwrap_or_else(|| EMULATOR_ACCOUNT.into());
        let base = emulator_url.unwrap_or(EMULATOR_URL).trim_end_matches('/');
        let credentialed = [
            AzureConfigKey::AccessKey,
            AzureConfigKey::SasKey,
            AzureConfigKey::Token,
        ]
        .into_iter()
        .any(|k| value(&builder, k).is_some());
        if !credentialed {
            builder = builder.with_access_key(EMULATOR_KEY);
        }
        builder = builder
            .with_account(&account)
            .with_endpoint(format!("{base}/{account}"))
            .with_allow_http(true);
        client = client.with_allow_http(true);
    }
    let Some(account) = value(&builder, AzureConfigKey::AccountName) else {
        return Err(Error::Storage {
            location: url.to_owned(),
            what: "no storage account: set AZURE_STORAGE_ACCOUNT_NAME (or AZURE_STORAGE_USE_EMULATOR=true for Azurite)".into(),
        });
    };
    if let Some(e) = value(&builder, AzureConfigKey::Endpoint)
        && (e.contains('?') || e.contains('#'))
    {
        return Err(usage(
            "AZURE_STORAGE_ENDPOINT carries a query or fragment: give the account's endpoint alone (a SAS goes in AZURE_STORAGE_SAS_KEY)".into(),
        ));
    }
    let base = value(&builder, AzureConfigKey::Endpoint).unwrap_or_else(|| {
        let fabric =
            value(&builder, AzureConfigKey::UseFabricEndpoint).is_some_and(|v| super::truthy(&v));
        let domain = if fabric {
            "fabric.microsoft.com"
        } else {
            "core.windows.net"
        };
        format!("https://{account}.blob.{domain}")
    });
    let unsigned =
        value(&builder, AzureConfigKey::SkipSignature).is_some_and(|v| super::truthy(&v));
    let unconditional_only = value(&builder, AzureConfigKey::EncryptionKey)
        .is_some()
        .then_some("AZURE_STORAGE_ENCRYPTION_KEY");
    let content_type = client.get_content_type(path).map(str::to_owned);
    let azure = Arc::new(
        builder
            .with_container_name(container)
            .build()
            .map_err(|e| store_error(url, &e))?,
    );
    Ok(Built {
        store: azure.clone(),
        client,
        completion: super::Completion::Azure(Completion {
            azure,
            account,
            blob: blob_url(&base, container, path).map_err(|what| Error::Storage {
                location: url.to_owned(),
                what,
            })?,
            unsigned,
            content_type,
        }),
        unconditional_only,
    })
}

/// The blob's URL: the account's endpoint, the container, the blob's
/// path segments, each percent-encoded by the URL parser (what
/// `object_store` does, so that this request reaches the same blob).
fn blob_url(base: &str, container: &str, path: &ObjectPath) -> std::result::Result<Url, String> {
    let mut url =
        Url::parse(base).map_err(|e| format!("the endpoint {base:?} is not a URL: {e}"))?;
    url.path_segments_mut()
        .map_err(|()| format!("the endpoint {base:?} cannot hold a path"))?
        .push(container)
        .extend(path.parts());
    Ok(url)
}

/// `Put Block List` with `If-None-Match: *`, signed by `object_store`'s
/// [`AzureAuthorizer`] (SharedKey, a bearer token or a SAS, whichever the
/// settings gave).
pub(super) async fn complete_if_absent(
    sh: &Shared,
    c: &Completion,
    parts: &[PartId],
) -> Result<()> {
    let body = block_list(parts);
    super::complete_conditionally(sh, || put_block_list_if_absent(sh, c, &body), judge).await
}

/// Whether a blob is at the name, asked of a host that may write but not
/// read (its `HEAD` refused): `Put Block List` with `If-None-Match: *`
/// naming one block never uploaded (a random id, as long as
/// `object_store`'s). Azure answers 409 or 412 when a blob is there, and
/// 400 `InvalidBlockList` when not, creating nothing (Azurite does the
/// same; tested). So a taken name is refused before the upload, not after
/// it, when its blocks would stay under that name for a week. `None`: no
/// telling (the upload goes on; its completion is what enforces it).
pub(super) async fn taken(sh: &Shared, c: &Completion) -> Option<bool> {
    let mut id = [0u8; 16];
    crate::key::random_bytes(&mut id);
    let never_uploaded = PartId {
        content_id: hex::encode(id),
    };
    let body = block_list(&[never_uploaded]);
    let request = put_block_list_if_absent(sh, c, &body).await.ok()?;
    let response = sh.http.execute(request).await.ok()?;
    let status = response.status().as_u16();
    let text = response.into_body().bytes().await.ok()?;
    match judge(status, &String::from_utf8_lossy(&text)) {
        Verdict::Exists => Some(true),
        Verdict::Gone => Some(false),
        _ => None,
    }
}

/// The request `Put Block List` with `If-None-Match: *` and `body`, built
/// and signed anew for each try.
async fn put_block_list_if_absent(sh: &Shared, c: &Completion, body: &str) -> Result<HttpRequest> {
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE, IF_NONE_MATCH};
    let mut url = c.blob.clone();
    url.set_query(Some("comp=blocklist"));
    let mut builder = http::Request::builder()
        .method(http::Method::PUT)
        .uri(url.as_str())
        .header(IF_NONE_MATCH, "*")
        .header(CONTENT_TYPE, "application/xml")
        .header("x-ms-version", SERVICE_VERSION)
        // SharedKey signs the length: it must be set before signing.
        .header(CONTENT_LENGTH, body.len());
    if let Some(t) = &c.content_type {
        builder = builder.header("x-ms-blob-content-type", t);
    }
    let mut request: HttpRequest =
        builder
            .body(Bytes::from(body.to_owned()).into())
            .map_err(|e| Error::Storage {
                location: sh.url.clone(),
                what: e.to_string(),
            })?;
    if !c.unsigned {
        let credential = c
            .azure
            .credentials()
            .get_credential()
            .await
            .map_err(|e| store_error(&sh.url, &e))?;
        AzureAuthorizer::new(&credential, &c.account)
            .try_authorize(&mut request)
            .map_err(|e| store_error(&sh.url, &e))?;
    }
    Ok(request)
}

/// What an answer to `Put Block List` means. An existing blob is 409
/// `BlobAlreadyExists` or 412; after a lost answer, a retry finds the
/// blocks committed already (400 `InvalidBlockList`).
fn judge(status: u16, body: &str) -> Verdict {
    let code = super::xml_text(body, "Code");
    match (status, code.as_deref()) {
        (201, _) => Verdict::Done,
        (412, _) | (409, Some("BlobAlreadyExists")) => Verdict::Exists,
        (400, Some("InvalidBlockList")) => Verdict::Gone,
        // Azure's other 409s (a container being deleted, an archived or
        // immutable blob) do not pass with time.
        (408 | 500..=599, _) => Verdict::Transient,
        _ => Verdict::Failed,
    }
}

/// The XML body of `Put Block List`: the blocks `object_store` uploaded,
/// in order, by the ids it gave them (the base64 of each part's id).
fn block_list(parts: &[PartId]) -> String {
    let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<BlockList>\n");
    for p in parts {
        body.push_str(&format!(
            "<Uncommitted>{}</Uncommitted>\n",
            STANDARD.encode(&p.content_id)
        ));
    }
    body.push_str("</BlockList>");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_list_names_blocks_in_order() {
        let parts = ["00ff", "a1b2"].map(|id| PartId {
            content_id: id.into(),
        });
        assert_eq!(
            block_list(&parts),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<BlockList>\n<Uncommitted>MDBmZg==</Uncommitted>\n<Uncommitted>YTFiMg==</Uncommitted>\n</BlockList>"
        );
    }

    #[test]
    fn the_blob_url_is_the_one_object_store_addresses() {
        use object_store::signer::Signer;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (endpoint, fabric) in [
            (None, false),
            (None, true),
            (Some("http://127.0.0.1:10000/devstoreaccount1"), false),
            (Some("https://acct.blob.example/"), false),
            (Some("https://acct.blob.example/some/path"), false),
        ] {
            for key in ["host/a b.coffer", "x%y/z", "日本/ü.coffer", "a+b=c&d"] {
                let path = ObjectPath::parse(key).unwrap();
                let mut b = MicrosoftAzureBuilder::new()
                    .with_account("acct")
                    .with_access_key(EMULATOR_KEY)
                    .with_container_name("c")
                    .with_use_fabric_endpoint(fabric);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e.into()).with_allow_http(true);
                }
                let theirs = rt
                    .block_on(b.build().unwrap().signed_url(
                        http::Method::PUT,
                        &path,
                        std::time::Duration::from_secs(60),
                    ))
                    .unwrap();
                let base = endpoint.map(str::to_owned).unwrap_or_else(|| {
                    let d = if fabric {
                        "fabric.microsoft.com"
                    } else {
                        "core.windows.net"
                    };
                    format!("https://acct.blob.{d}")
                });
                let ours = blob_url(&base, "c", &path).unwrap();
                assert_eq!(
                    (ours.scheme(), ours.host_str(), ours.port(), ours.path()),
                    (
                        theirs.scheme(),
                        theirs.host_str(),
                        theirs.port(),
                        theirs.path()
                    ),
                    "{endpoint:?} {key}"
                );
            }
        }
    }
}
