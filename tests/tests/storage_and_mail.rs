//! The S3 client against a real S3-protocol server, and the mail folder transport.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use lectern_core::config::{MailConfig, MailTransport};
use lectern_core::mail::{self, EmailTemplate, Mailer};
use lectern_core::storage::Storage;
use lectern_tests::TestS3;

async fn storage() -> (TestS3, Storage) {
    let s3 = TestS3::start().await;
    let storage = Storage::new(&s3.config());
    storage.ensure_bucket().await.expect("bucket");
    storage
        .ensure_bucket()
        .await
        .expect("ensure_bucket is idempotent");
    (s3, storage)
}

async fn collect(body: ByteStream) -> Vec<u8> {
    body.collect()
        .await
        .expect("read body")
        .into_bytes()
        .to_vec()
}

#[tokio::test]
async fn put_head_get_delete() {
    let (_s3, storage) = storage().await;
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    storage
        .put(
            "videos/a.bin",
            ByteStream::from(bytes.clone()),
            "application/octet-stream",
        )
        .await
        .unwrap();
    let info = storage.head("videos/a.bin").await.unwrap().expect("exists");
    assert_eq!(info.size, 200_000);
    assert_eq!(
        info.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        collect(storage.get("videos/a.bin").await.unwrap()).await,
        bytes
    );

    storage.delete("videos/a.bin").await.unwrap();
    assert!(storage.head("videos/a.bin").await.unwrap().is_none());
    assert!(matches!(
        storage.get("videos/a.bin").await,
        Err(lectern_core::storage::StorageError::NotFound(_))
    ));
}

#[tokio::test]
async fn presigned_put_and_get_work_with_a_plain_http_client() {
    let (_s3, storage) = storage().await;
    let http = reqwest::Client::new();
    let body = b"presigned upload body".to_vec();
    let put = storage
        .presign_put(
            "uploads/p.txt",
            "text/plain",
            body.len() as u64,
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    assert_eq!(put.method, "PUT");
    let mut req = http.put(&put.url).body(body.clone());
    for (k, v) in &put.headers {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    let get = storage
        .presign_get("uploads/p.txt", Duration::from_secs(300))
        .await
        .unwrap();
    let fetched = http.get(&get.url).send().await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), body);

    // A tampered signature is refused.
    let at = get.url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &get.url[at..=at] == "a" { "b" } else { "a" };
    let tampered = format!("{}{flipped}{}", &get.url[..at], &get.url[at + 1..]);
    assert_eq!(
        http.get(&tampered).send().await.unwrap().status().as_u16(),
        403
    );
}

#[tokio::test]
async fn multipart_upload_through_presigned_part_urls() {
    let (_s3, storage) = storage().await;
    let http = reqwest::Client::new();
    let key = "uploads/big.bin";
    let upload_id = storage.create_multipart(key, "video/mp4").await.unwrap();
    let part_size = 5 * 1024 * 1024;
    let whole: Vec<u8> = (0..(part_size + 1234)).map(|i| (i % 253) as u8).collect();
    let mut parts = Vec::new();
    for (index, chunk) in whole.chunks(part_size).enumerate() {
        let number = i32::try_from(index + 1).unwrap();
        let presigned = storage
            .presign_upload_part(
                key,
                &upload_id,
                number,
                chunk.len() as u64,
                Duration::from_secs(300),
            )
            .await
            .unwrap();
        let res = http
            .put(&presigned.url)
            .body(chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "part {number}: {}", res.status());
        let etag = res.headers()["etag"].to_str().unwrap().to_owned();
        parts.push((number, etag));
    }
    storage
        .complete_multipart(key, &upload_id, &parts)
        .await
        .unwrap();
    let info = storage.head(key).await.unwrap().expect("assembled");
    assert_eq!(info.size, whole.len() as u64);
    assert_eq!(collect(storage.get(key).await.unwrap()).await, whole);
}

#[tokio::test]
async fn aborted_multipart_leaves_no_object() {
    let (_s3, storage) = storage().await;
    let upload_id = storage
        .create_multipart("uploads/x", "video/mp4")
        .await
        .unwrap();
    storage
        .abort_multipart("uploads/x", &upload_id)
        .await
        .unwrap();
    assert!(storage.head("uploads/x").await.unwrap().is_none());
}

#[tokio::test]
async fn storage_down_is_reported_as_unavailable() {
    let mut config = {
        let s3 = TestS3::start().await;
        s3.config()
    };
    config.endpoint = Some(
        format!("http://127.0.0.1:{}", lectern_tests::free_port())
            .parse()
            .unwrap(),
    );
    let storage = Storage::new(&config);
    let err = storage.ready().await.expect_err("nothing listens there");
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn the_local_default_writes_eml_files() {
    let dir = std::env::temp_dir().join(format!("lectern-mail-{}", uuid::Uuid::new_v4().simple()));
    let mailer = Mailer::new(&MailConfig {
        transport: MailTransport::Folder(dir.clone()),
        from: "Lectern <no-reply@lectern.test>".into(),
        bulk_per_minute: 600,
    })
    .unwrap();
    let rendered = mail::render(
        EmailTemplate::TestMessage,
        "http://localhost:8080",
        "http://localhost:8080",
        &Default::default(),
    )
    .unwrap();
    mailer
        .send(
            "grace@example.com",
            &rendered,
            Some("http://localhost:8080/unsubscribe?token=abc"),
        )
        .await
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("To: grace@example.com"), "{text}");
    assert!(
        text.contains("List-Unsubscribe: <http://localhost:8080/unsubscribe?token=abc>"),
        "{text}"
    );
    assert!(text.contains("multipart/alternative"));
    std::fs::remove_dir_all(&dir).unwrap();
}
