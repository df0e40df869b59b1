kefu_runtime::service_main! {
    /// kefu knowledge: hybrid retrieval over each tenant's documents (gRPC).
    kefu_knowledge
}
