kefu_runtime::service_main! {
    /// kefu channel service: signed webhooks and WeChat Official Accounts in, replies out on the customer's own channel.
    kefu_channels
}
