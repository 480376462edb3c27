//! Golden HMAC-SHA256 vectors for the Jupyter wire format, checked against the signing and
//! verification this client uses (`jupyter-zmq-client`).
//!
//! The signature is the lower-case hex HMAC-SHA256, keyed with the ASCII bytes of the key
//! string, over the header, parent header, metadata and content frames in that order; buffers
//! are not signed. The golden digests were computed with Python's `hmac` module, which
//! `jupyter_client` signs with.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use jupyter_protocol::{ExecuteRequest, JupyterMessage};
use jupyter_zmq_client::{Connection, RawMessage, RuntimeError};
use sha2::Sha256;
use zeromq::{Socket, SocketRecv, ZmqMessage};

use crate::client::ClientError;

const KEY: &str = "9c6bbd3d5c5e4c1f8e0c0e6b2d0f4a71";
const HEADER: &[u8] = br#"{"msg_id":"golden-1","username":"isobench","session":"s-1","date":"2026-01-01T00:00:00.000000Z","msg_type":"execute_request","version":"5.3"}"#;
const PARENT_HEADER: &[u8] = b"{}";
const METADATA: &[u8] = b"{}";
const CONTENT: &[u8] = br#"{"code":"1 + 1","silent":false,"store_history":false,"user_expressions":{},"allow_stdin":false,"stop_on_error":true}"#;
const BUFFER: &[u8] = b"extra-buffer";

/// `hmac.new(KEY, HEADER + PARENT_HEADER + METADATA + CONTENT, sha256).hexdigest()`.
const GOLDEN_DIGEST: &str = "1e055a7c68177bc5e59058f1ed9ea461302dabdccb503371b9417b7f27d5c873";

/// The same with `BUFFER` appended, which a correct signer must not produce.
const DIGEST_WITH_BUFFER: &str = "40f48126e2639cd6361f955830e62322d797c67e3a2181d9f3a39c5e6fc2a175";

const DELIMITER: &[u8] = b"<IDS|MSG>";

fn frames(signature: &str, content: &[u8]) -> ZmqMessage {
    let parts: Vec<Bytes> = vec![
        Bytes::from_static(DELIMITER),
        Bytes::from(signature.as_bytes().to_vec()),
        Bytes::from_static(HEADER),
        Bytes::from_static(PARENT_HEADER),
        Bytes::from_static(METADATA),
        Bytes::from(content.to_vec()),
        Bytes::from_static(BUFFER),
    ];
    ZmqMessage::try_from(parts).unwrap()
}

/// The verification key exactly as the client's connections hold it.
fn verifier(key: &str) -> Connection<zeromq::DealerSocket> {
    Connection::new(zeromq::DealerSocket::new(), key, "session")
}

fn hex_hmac(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    let digest = mac.finalize().into_bytes();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn reference_hmac_matches_golden() {
    let parts = [HEADER, PARENT_HEADER, METADATA, CONTENT];
    assert_eq!(hex_hmac(KEY, &parts), GOLDEN_DIGEST);
}

#[tokio::test]
async fn golden_signature_verifies() {
    let received = RawMessage::from_multipart(frames(GOLDEN_DIGEST, CONTENT), &verifier(KEY).mac);
    let received = received.expect("the golden signature verifies");
    assert_eq!(
        received.jparts.len(),
        5,
        "four signed frames and one buffer"
    );
}

#[tokio::test]
async fn signature_over_buffers_rejected() {
    let result =
        RawMessage::from_multipart(frames(DIGEST_WITH_BUFFER, CONTENT), &verifier(KEY).mac);
    assert!(matches!(result, Err(RuntimeError::VerifyError(_))));
}

#[tokio::test]
async fn flipped_content_byte_rejected() {
    let mut content = CONTENT.to_vec();
    content[10] ^= 0x01;
    let result = RawMessage::from_multipart(frames(GOLDEN_DIGEST, &content), &verifier(KEY).mac);
    assert!(matches!(result, Err(RuntimeError::VerifyError(_))));
}

#[tokio::test]
async fn flipped_digest_digit_rejected() {
    let mut digest = GOLDEN_DIGEST.to_owned();
    digest.replace_range(0..1, "2");
    let result = RawMessage::from_multipart(frames(&digest, CONTENT), &verifier(KEY).mac);
    assert!(matches!(result, Err(RuntimeError::VerifyError(_))));
}

#[tokio::test]
async fn upper_case_digest_rejected() {
    let upper = GOLDEN_DIGEST.to_uppercase();
    let result = RawMessage::from_multipart(frames(&upper, CONTENT), &verifier(KEY).mac);
    assert!(result.is_err(), "the signature is lower-case hex only");
}

#[tokio::test]
async fn wrong_key_rejected() {
    let result = RawMessage::from_multipart(frames(GOLDEN_DIGEST, CONTENT), &verifier("other").mac);
    assert!(matches!(result, Err(RuntimeError::VerifyError(_))));
}

#[test]
fn verification_failures_are_bad_signature() {
    let upper = GOLDEN_DIGEST.to_uppercase();
    let decode_failure = RawMessage::from_multipart(frames(&upper, CONTENT), &verifier(KEY).mac);
    let mismatch = RawMessage::from_multipart(frames("00", CONTENT), &verifier(KEY).mac);
    for result in [decode_failure, mismatch] {
        let error = crate::client::receive_error("shell", result.unwrap_err());
        assert!(
            matches!(error, ClientError::BadSignature { channel: "shell" }),
            "got {error}"
        );
    }
}

/// Sends one message through a real ZeroMQ DEALER and returns the frames a ROUTER receives,
/// without the routing identity.
async fn sent_frames(key: &str) -> Vec<Bytes> {
    let mut router = zeromq::RouterSocket::new();
    let endpoint = router.bind("tcp://127.0.0.1:0").await.unwrap();
    let mut dealer = verifier(key);
    dealer.socket.connect(&endpoint.to_string()).await.unwrap();
    let mut message: JupyterMessage = ExecuteRequest::new("1 + 1".into()).into();
    message.buffers = vec![Bytes::from_static(BUFFER)];
    dealer.send(message).await.unwrap();
    let mut received = router.recv().await.unwrap().into_vec();
    received.remove(0);
    received
}

#[tokio::test]
async fn sent_signature_covers_four_frames() {
    let received = sent_frames(KEY).await;
    assert_eq!(received[0].as_ref(), DELIMITER);
    let signature = std::str::from_utf8(&received[1]).unwrap();
    let signed: Vec<&[u8]> = received[2..6].iter().map(|part| part.as_ref()).collect();
    assert_eq!(signature, hex_hmac(KEY, &signed));
    assert_eq!(received[6].as_ref(), BUFFER, "the buffer follows unsigned");
}

#[tokio::test]
async fn empty_key_sends_empty_signature() {
    let received = sent_frames("").await;
    assert_eq!(received[0].as_ref(), DELIMITER);
    assert!(received[1].is_empty(), "signature frame: {:?}", received[1]);
}
