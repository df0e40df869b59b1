-- A ticket's idempotency key is the customer's message id (or an agent's request id):
-- unique per customer, like message ids, so two customers whose clients happen to pick
-- the same id never share a ticket.
DROP INDEX tickets_idempotency;
CREATE UNIQUE INDEX tickets_idempotency ON tickets (tenant_id, customer_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
