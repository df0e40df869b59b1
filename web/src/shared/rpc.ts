// The one way both pages reach the gateway: gRPC-Web over fetch, to the address the
// serving gateway publishes in /config.json, so one build fits every deployment.
import { Code, ConnectError, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

export { Code, ConnectError };

interface WebConfig {
  gatewayUrl: string;
}

/** Unary calls give up after this; streams opt out with `{ timeoutMs: 0 }`. */
const CALL_TIMEOUT_MS = 15_000;

/**
 * The transport to the gateway. `apiKey` is read on every call, so signing in or out
 * needs no new transport; without a key the caller is an anonymous customer.
 */
export async function openTransport(apiKey: () => string | null = () => null): Promise<Transport> {
  const response = await fetch("/config.json", { cache: "no-store" });
  if (!response.ok) {
    throw new Error(`/config.json: HTTP ${response.status}`);
  }
  const config = (await response.json()) as WebConfig;
  const authorize: Interceptor = (next) => (request) => {
    const key = apiKey();
    if (key) {
      request.header.set("authorization", `Bearer ${key}`);
    }
    return next(request);
  };
  return createGrpcWebTransport({
    baseUrl: config.gatewayUrl,
    interceptors: [authorize],
    defaultTimeoutMs: CALL_TIMEOUT_MS,
  });
}

/** The status code of a failed call (UNKNOWN for anything that is not a gRPC error). */
export function codeOf(error: unknown): Code {
  return ConnectError.from(error).code;
}

/** A short text for a failed call, as the gateway worded it. */
export function describe(error: unknown): string {
  const status = ConnectError.from(error);
  return status.rawMessage || Code[status.code];
}

/**
 * Makes `call` once more if the gateway was unavailable. Only for calls that carry an
 * idempotency key (message_id, request_id): the gateway answers a repeat with the first result.
 */
export async function withRetry<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    if (codeOf(error) !== Code.Unavailable) throw error;
    return call();
  }
}

/** A random id for customers, messages and replies (works outside secure contexts too). */
export function randomId(prefix: string): string {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
