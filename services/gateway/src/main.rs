kefu_runtime::service_main! {
    /// kefu gateway: the public gRPC API (conversations and tickets), authenticated and validated.
    kefu_gateway
}
