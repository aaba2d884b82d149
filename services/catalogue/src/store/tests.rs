//! The catalogue's stores against a fresh, migrated PostgreSQL database each: files with their
//! uploads and idempotency keys, completion into reference-counted blobs and their collection,
//! partial and final uploads, expiry, and deletion guarded by the runs that use a file.

use std::time::Duration;

use uuid::Uuid;

use super::Store;
use crate::domain::{Error, FileFilter, FileKind, FileStatus, NewFile, Page};

const DAY: Duration = Duration::from_secs(86_400);

async fn store() -> (pirus_tests::TestDb, Store) {
    let (db, pool) = pirus_tests::migrated_db().await.unwrap();
    (db, Store::new(pool))
}

fn new_file(name: &str, size: u64) -> NewFile {
    NewFile {
        name: name.into(),
        size: Some(size),
        ..NewFile::default()
    }
}

#[tokio::test]
async fn files_are_created_once_per_idempotency_key_and_per_run_output() {
    let (_db, s) = store().await;
    let keyed = NewFile {
        request_id: Some("k1".into()),
        ..new_file("a.txt", 3)
    };
    let first = s.create_file(keyed.clone(), DAY).await.unwrap();
    let again = s.create_file(keyed, DAY).await.unwrap();
    assert_eq!(first.id, again.id);
    assert_eq!(first.status, FileStatus::Uploading);
    let run = Uuid::now_v7();
    let output = NewFile {
        kind: Some(FileKind::Output),
        source_run_id: Some(run),
        ..new_file("out/x", 3)
    };
    let o1 = s.create_file(output.clone(), DAY).await.unwrap();
    let o2 = s.create_file(output, DAY).await.unwrap();
    assert_eq!(o1.id, o2.id, "a run's output is registered once");
    let outputs = s
        .list_files(
            &FileFilter {
                source_run_id: Some(run),
                ..FileFilter::default()
            },
            Page {
                size: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(outputs.len(), 1);
    assert!(matches!(
        s.get_file(Uuid::now_v7()).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn identical_content_shares_one_blob_collected_after_its_last_file() {
    let (_db, s) = store().await;
    let digest = "b".repeat(64);
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let file = s.create_file(new_file(name, 5), DAY).await.unwrap();
        let upload = s.get_upload(file.id).await.unwrap();
        s.complete_upload(&upload, &digest, 5, || Ok(()))
            .await
            .unwrap();
        let ready = s.get_file(file.id).await.unwrap();
        assert_eq!(ready.status, FileStatus::Ready);
        assert_eq!(ready.sha256.as_deref(), Some(digest.as_str()));
        ids.push(file.id);
    }
    assert!(s.unreferenced_blobs(10).await.unwrap().is_empty());
    let deleted = s.delete_file(ids[0]).await.unwrap();
    assert_eq!(deleted.unreferenced_blob, None, "still referenced");
    let deleted = s.delete_file(ids[1]).await.unwrap();
    assert_eq!(deleted.unreferenced_blob.as_deref(), Some(digest.as_str()));
    assert_eq!(
        s.unreferenced_blobs(10).await.unwrap(),
        vec![digest.clone()]
    );
    assert!(s.collect_blob(&digest, || Ok(())).await.unwrap());
    assert!(s.unreferenced_blobs(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn uploads_pause_expire_and_take_a_deferred_length_once() {
    let (_db, s) = store().await;
    let deferred = s
        .create_file(
            NewFile {
                size: None,
                ..new_file("later", 0)
            },
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    s.set_upload_length(deferred.id, 7).await.unwrap();
    assert_eq!(s.get_upload(deferred.id).await.unwrap().size, Some(7));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expired = s.expired_uploads(10).await.unwrap();
    assert!(expired.iter().any(|u| u.id == deferred.id));
    let upload = s.get_upload(deferred.id).await.unwrap();
    s.remove_upload(&upload).await.unwrap();
    assert!(matches!(
        s.get_upload(deferred.id).await,
        Err(Error::NotFound(_))
    ));

    let idle = s.create_file(new_file("idle", 4), DAY).await.unwrap();
    assert_eq!(s.pause_idle_uploads(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(s.get_file(idle.id).await.unwrap().status, FileStatus::Pause);
}

#[tokio::test]
async fn a_file_an_unfinished_run_uses_is_not_deleted() {
    let (db, s) = store().await;
    let file = s.create_file(new_file("input", 1), DAY).await.unwrap();
    let client = db.client().await.unwrap();
    let run = Uuid::now_v7();
    client
        .batch_execute(&format!(
            "INSERT INTO runs (id, pipeline_id, pipeline_name, pipeline_version, image_sha256,
                               name, status, config, input_file_ids)
             VALUES ('{run}', '{}', 'p', '1', repeat('a', 64), 'r', 'waiting', '{{}}',
                     ARRAY['{}'::uuid])",
            Uuid::now_v7(),
            file.id
        ))
        .await
        .unwrap();
    let refused = s.delete_file(file.id).await;
    assert!(
        matches!(refused, Err(Error::FailedPrecondition(_))),
        "{refused:?}"
    );
    client
        .batch_execute(&format!(
            "UPDATE runs SET status = 'canceled', ended_at = now() WHERE id = '{run}'"
        ))
        .await
        .unwrap();
    s.delete_file(file.id).await.unwrap();
}
