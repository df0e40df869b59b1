kefu_runtime::service_main! {
    /// kefu sentiment service: five-level sentiment of a message (gRPC).
    kefu_sentiment
}
