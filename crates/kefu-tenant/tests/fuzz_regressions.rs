//! Inputs on which a property of the `tenant_file` fuzz target (fuzz/src/tenant.rs)
//! failed, kept as tests with the exact input.
use kefu_tenant::Tenant;

/// The key's actor is recorded in every audit entry and on every reply made with it:
/// a blank one leaves no trace of who acted.
#[test]
#[ignore = "fails: Tenant::parse accepts a blank agent"]
fn a_key_with_a_blank_agent_is_refused() {
    let source = r#"id = "acme"
name = "Acme"
[[api_keys]]
id = "desk"
role = "agent"
sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
agent = " "
[[intents]]
name = "greeting"
route = "answer"
urgency = "low"
examples = ["hi"]
"#;
    match Tenant::parse(source) {
        Err(_) => {}
        Ok(tenant) => panic!(
            "accepted: key {} acts as {:?}",
            tenant.api_keys[0].id,
            tenant.api_keys[0].actor()
        ),
    }
}
