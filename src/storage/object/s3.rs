//! S3 and S3-compatible stores (`s3://bucket/key`): the client built from
//! `AWS_*` settings, and the conditional completion `object_store` does
//! not make (`CompleteMultipartUpload` with `If-None-Match: *`).

use super::{Built, Shared, Verdict, store_error};
use crate::error::{Error, Result};
use crate::storage::StoreOptions;
use bytes::Bytes;
use object_store::MultipartId;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{ClientOptions, HttpRequest};
use object_store::multipart::PartId;
use object_store::signer::Signer;
use std::sync::Arc;
use std::time::Duration;

/// What the conditional completion needs besides the client.
pub(super) struct Completion {
    s3: Arc<AmazonS3>,
    /// The region requests are signed for (object_store's default when
    /// none is set: us-east-1).
    region: String,
    /// `AWS_REQUEST_PAYER`: the completion must say so too.
    request_payer: bool,
}

/// The client for `bucket`, configured by the `AWS_*` pairs of `opts`.
pub(super) fn build(bucket: &str, opts: &StoreOptions, url: &str) -> Result<Built> {
    let mut builder = AmazonS3Builder::new();
    let mut client = ClientOptions::new();
    for (k, v) in opts.pairs() {
        if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
            if let AmazonS3ConfigKey::Client(c) = key {
                client = client.with_config(c, v);
            }
            builder = builder.with_config(key, v);
        }
    }
    let region = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .or_else(|| builder.get_config_value(&AmazonS3ConfigKey::DefaultRegion))
        .unwrap_or_else(|| "us-east-1".into());
    let set = |key| {
        builder
            .get_config_value(&key)
            .is_some_and(|v| super::truthy(&v) || v == "sha256" || v == "crc64nvme")
    };
    let request_payer = set(AmazonS3ConfigKey::RequestPayer);
    let unconditional_only = if set(AmazonS3ConfigKey::Checksum) {
        Some("AWS_CHECKSUM_ALGORITHM")
    } else if set(AmazonS3ConfigKey::S3Express) {
        Some("AWS_S3_EXPRESS")
    } else {
        None
    };
    let s3 = Arc::new(
        builder
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| store_error(url, &e))?,
    );
    Ok(Built {
        store: s3.clone(),
        client,
        completion: super::Completion::S3(Completion {
            s3,
            region,
            request_payer,
        }),
        unconditional_only,
    })
}

/// `CompleteMultipartUpload` with `If-None-Match: *`, signed with
/// `object_store`'s SigV4 signer ([`AwsAuthorizer`], the header covered)
/// and sent to the URL `object_store` itself addresses the object by.
pub(super) async fn complete_if_absent(
    sh: &Shared,
    c: &Completion,
    upload: &MultipartId,
    parts: &[PartId],
) -> Result<()> {
    use http::header::{CONTENT_TYPE, IF_NONE_MATCH};
    let mut url =
        c.s3.signed_url(http::Method::POST, &sh.path, Duration::from_secs(60))
            .await
            .map_err(|e| store_error(&sh.url, &e))?;
    let mut query = String::from("uploadId=");
    crate::pkcs11_uri::pct_encode(&mut query, upload.as_bytes(), false, b"");
    url.set_query(Some(&query));
    let body = complete_body(parts);
    let request = || async {
        let credential =
            c.s3.credentials()
                .get_credential()
                .await
                .map_err(|e| store_error(&sh.url, &e))?;
        let mut request: HttpRequest = http::Request::builder()
            .method(http::Method::POST)
            .uri(url.as_str())
            .header(IF_NONE_MATCH, "*")
            .header(CONTENT_TYPE, "application/xml")
            .body(Bytes::from(body.clone()).into())
            .map_err(|e| Error::Storage {
                location: sh.url.clone(),
                what: e.to_string(),
            })?;
        AwsAuthorizer::new(&credential, "s3", &c.region)
            .with_request_payer(c.request_payer)
            .try_authorize(&mut request, None)
            .map_err(|e| store_error(&sh.url, &e))?;
        Ok(request)
    };
    super::complete_conditionally(sh, request, judge).await
}

/// What an answer to the completion means. S3 may answer 200 and report
/// an error in the body; 409 is a concurrent conditional write.
fn judge(status: u16, body: &str) -> Verdict {
    match status {
        200 if super::xml_text(body, "Code").is_none() => Verdict::Done,
        412 => Verdict::Exists,
        404 => Verdict::Gone,
        200 | 409 | 500..=599 => Verdict::Transient,
        _ => Verdict::Failed,
    }
}

/// The XML body of `CompleteMultipartUpload`.
fn complete_body(parts: &[PartId]) -> String {
    let mut body = String::from(
        r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#,
    );
    for (i, p) in parts.iter().enumerate() {
        let etag = p
            .content_id
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
            i + 1
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_body_names_parts_in_order() {
        let parts = [
            PartId {
                content_id: "\"a\"".into(),
            },
            PartId {
                content_id: "\"b<\"".into(),
            },
        ];
        assert_eq!(
            complete_body(&parts),
            r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><PartNumber>1</PartNumber><ETag>"a"</ETag></Part><Part><PartNumber>2</PartNumber><ETag>"b&lt;"</ETag></Part></CompleteMultipartUpload>"#
        );
    }
}
