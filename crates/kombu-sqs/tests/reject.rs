//! `reject(requeue=false)` as Kombu 5.7 settles it, against a throwaway moto server: deleted
//! from a queue without a RedrivePolicy, left for SQS to dead-letter on a queue with one, and
//! a predefined queue's `backoff_policy` for its `backoff_tasks`.
#![allow(clippy::expect_used, clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use common::{raw_client, Moto};
use kombu::{Connection, ConnectionOptions, ErrorKind, PublishOptions};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(15);

async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> String {
    let mut request = client.create_queue().queue_name(name);
    for (k, v) in attributes {
        request = request.attributes(k.clone(), v.clone());
    }
    request
        .send()
        .await
        .expect("create queue")
        .queue_url()
        .expect("url")
        .to_owned()
}

async fn queue_attribute(client: &aws_sdk_sqs::Client, url: &str, name: QueueAttributeName) -> String {
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .expect("attributes")
        .attributes()
        .and_then(|a| a.get(&name))
        .cloned()
        .expect("attribute")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_is_deleted_without_a_redrive_policy() {
    let moto = Moto::start();
    let client = raw_client(&moto);
    // A one-second visibility timeout: an undeleted message would be back at once.
    let url = create_queue(
        &client,
        "plain",
        &[(QueueAttributeName::VisibilityTimeout, "1".into())],
    )
    .await;
    let conn = Connection::new(&moto.url()).expect("connection");
    let queue = conn.simple_queue("plain");
    queue.put("rejected").await.expect("put");
    let m = queue.get(Some(PATIENCE)).await.expect("the message");
    assert_eq!(m.decode::<String>().unwrap(), "rejected");
    m.reject(false).await.expect("reject");
    // Positive control: a message sent after it does arrive.
    queue.put("control").await.expect("put");
    let m = queue.get(Some(PATIENCE)).await.expect("the control message");
    assert_eq!(m.decode::<String>().unwrap(), "control");
    m.ack().await.expect("ack");
    // The rejected one never comes back, long after its visibility timeout ran out.
    match queue.get(Some(Duration::from_secs(4))).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Timeout, "{e}"),
        Ok(m) => panic!("a settled message came back: {:?}", m.decode::<String>()),
    }
    for attribute in [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ] {
        assert_eq!(
            queue_attribute(&client, &url, attribute.clone()).await,
            "0",
            "{attribute:?}"
        );
    }
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_message_goes_to_the_dead_letter_queue_of_a_redrive_policy() {
    let moto = Moto::start();
    let client = raw_client(&moto);
    let dlq_url = create_queue(&client, "doomed-dlq", &[]).await;
    let dlq_arn = queue_attribute(&client, &dlq_url, QueueAttributeName::QueueArn).await;
    let policy = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1}).to_string();
    create_queue(
        &client,
        "doomed",
        &[
            (QueueAttributeName::VisibilityTimeout, "1".into()),
            (QueueAttributeName::RedrivePolicy, policy),
        ],
    )
    .await;
    let conn = Connection::new(&moto.url()).expect("connection");
    let queue = conn.simple_queue("doomed");
    let dlq = conn.simple_queue("doomed-dlq");
    queue.put("to the dlq").await.expect("put");
    let m = queue.get(Some(PATIENCE)).await.expect("the message");
    m.reject(false).await.expect("reject");
    // SQS moves it once it has been received maxReceiveCount times: at the next receive
    // after its visibility timeout. It must not be deleted, nor come back to the queue.
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        assert!(
            Instant::now() < deadline,
            "the rejected message never reached the dead-letter queue"
        );
        if let Some(m) = queue.get_nowait().await.expect("get") {
            panic!("the rejected message came back: {:?}", m.decode::<String>());
        }
        if let Some(m) = dlq.get_nowait().await.expect("get") {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(dead.decode::<String>().unwrap(), "to the dlq");
    dead.ack().await.expect("ack");
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_policy_delays_a_rejected_backoff_task() {
    let moto = Moto::start();
    let client = raw_client(&moto);
    // Without the backoff a rejected (undeleted) message would be back after 30 s.
    let url = create_queue(
        &client,
        "retries",
        &[(QueueAttributeName::VisibilityTimeout, "30".into())],
    )
    .await;
    let mut options = ConnectionOptions::default();
    options.transport_options.insert(
        "predefined_queues".into(),
        json!({"retries": {"url": url, "backoff_policy": {"1": 3, "2": 30}, "backoff_tasks": ["tasks.retry_me"]}})
            .to_string(),
    );
    let conn = Connection::with_options(&moto.url(), options).expect("connection");
    let queue = conn.simple_queue("retries");
    for (body, task) in [("retry me", "tasks.retry_me"), ("drop me", "tasks.other")] {
        queue
            .put_with(&body, PublishOptions::new().header("task", task))
            .await
            .expect("put");
    }
    let mut received = Vec::new();
    while received.len() < 2 {
        received.push(queue.get(Some(PATIENCE)).await.expect("both messages"));
    }
    let rejected_at = Instant::now();
    for m in &received {
        m.reject(false).await.expect("reject");
    }
    // The backoff task is back after the policy's 3 s for its first receive, not before.
    let back = queue
        .get(Some(PATIENCE))
        .await
        .expect("the backoff task comes back");
    let waited = rejected_at.elapsed();
    assert_eq!(back.decode::<String>().unwrap(), "retry me");
    assert!(back.redelivered());
    assert!(
        waited >= Duration::from_millis(2_900),
        "back after {waited:?}, before the 3 s backoff"
    );
    back.ack().await.expect("ack");
    // The other task was deleted (the queue has no RedrivePolicy): nothing is left.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for attribute in [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ] {
        assert_eq!(
            queue_attribute(&client, &url, attribute.clone()).await,
            "0",
            "{attribute:?}"
        );
    }
    conn.close().await.expect("close");
}
