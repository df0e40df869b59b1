kefu_runtime::service_main! {
    /// kefu router: intent classification learned from each tenant's examples (gRPC).
    kefu_router
}
