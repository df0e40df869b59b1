kefu_runtime::service_main! {
    /// kefu ticket service: ticket lifecycle, VIP queue, SLA and audit trail (gRPC).
    kefu_ticket
}
