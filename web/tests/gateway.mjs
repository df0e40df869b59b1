// The gateway as a client program sees it, from Node: the connect-web clients of the
// code generated for the pages (web/src/gen, made by `npm run build`).
import { importBundled } from "./bundle.mjs";

/**
 * Clients of the gateway at `gatewayUrl` over gRPC-Web: `customer` calls as an anonymous
 * customer, `as(key)` signs the calls with an API key; `code` holds the generated enums
 * and connect's helpers.
 */
export async function connectGateway(gatewayUrl) {
  const code = await importBundled(`
    export { Code, ConnectError, createClient } from "@connectrpc/connect";
    export { createGrpcWebTransport } from "@connectrpc/connect-web";
    export { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
    export { ChannelService, DeliveryDirection, DeliveryStatus } from "./gen/kefu/v1/channels_pb";
    export { Channel, Language, TicketStatus, VipTier } from "./gen/kefu/v1/common_pb";
    export { ConversationService, Handler, Role } from "./gen/kefu/v1/conversation_pb";
    export { ReportsService } from "./gen/kefu/v1/reports_pb";
    export { TicketService } from "./gen/kefu/v1/ticket_pb";
  `);
  const clients = (key) => {
    const authorize = (next) => (request) => {
      request.header.set("authorization", `Bearer ${key}`);
      return next(request);
    };
    const transport = code.createGrpcWebTransport({
      baseUrl: gatewayUrl,
      defaultTimeoutMs: 15_000,
      interceptors: key ? [authorize] : [],
    });
    return {
      conversations: code.createClient(code.ConversationService, transport),
      tickets: code.createClient(code.TicketService, transport),
      reports: code.createClient(code.ReportsService, transport),
      channels: code.createClient(code.ChannelService, transport),
    };
  };
  return { code, customer: clients(null), as: clients };
}
