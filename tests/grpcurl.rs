//! The real grpcurl binary against the gateway: services listed through reflection,
//! health checked, a message sent — what an operator does first.
mod common;

use std::process::Command;

fn grpcurl(args: &[&str]) -> (bool, String) {
    let output = match Command::new("grpcurl").args(args).output() {
        Ok(output) => output,
        Err(error) => {
            panic!("grpcurl is not on PATH ({error}); `make tools` installs it into .venv/bin")
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn grpcurl_lists_checks_health_and_sends_a_message() {
    let stack = common::stack();
    let address = stack.address("gateway").to_string();

    let (ok, services) = grpcurl(&["-plaintext", &address, "list"]);
    assert!(ok, "{services}");
    // What the gateway serves, and none of the internal services it would answer
    // UNIMPLEMENTED.
    let listed: Vec<&str> = services
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    assert_eq!(
        listed,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "kefu.v1.AdminService",
            "kefu.v1.ChannelService",
            "kefu.v1.ConversationService",
            "kefu.v1.ReportsService",
            "kefu.v1.TicketService",
        ],
        "{services}"
    );

    let (ok, described) = grpcurl(&[
        "-plaintext",
        &address,
        "describe",
        "kefu.v1.SendMessageRequest",
    ]);
    assert!(ok && described.contains("message_id"), "{described}");

    for service in ["", "kefu.v1.ConversationService"] {
        let request = format!("{{\"service\":\"{service}\"}}");
        let (ok, health) = grpcurl(&[
            "-plaintext",
            "-d",
            &request,
            &address,
            "grpc.health.v1.Health/Check",
        ]);
        assert!(ok && health.contains("SERVING"), "{health}");
    }

    let (ok, reply) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"tenant_id":"demo","customer_id":"grpcurl-1","channel":"CHANNEL_WEB","text":"How much is the Pro plan?"}"#,
        &address,
        "kefu.v1.ConversationService/SendMessage",
    ]);
    assert!(ok, "{reply}");
    let json: serde_json::Value =
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(json["intent"], "product_inquiry", "{reply}");
    assert!(
        json["sessionId"].as_str().is_some_and(|s| !s.is_empty()),
        "{reply}"
    );
    assert!(
        json["reply"].as_str().is_some_and(|s| s.contains('$')),
        "{reply}"
    );

    let (ok, error) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"tenant_id":"demo","customer_id":"c","text":""}"#,
        &address,
        "kefu.v1.ConversationService/SendMessage",
    ]);
    assert!(!ok && error.contains("InvalidArgument"), "{error}");
}
