//! The ticket rules, without gRPC or a database: which status may follow which and what
//! a move does to the assignee, the session and the audit trail; when a priority is
//! raised, by hand or by the SLA policy; when an agent may write to the customer; when
//! the SLA is breached. Each decision takes the ticket as last read and the time, and
//! says what to write (a change and its audit row) or why not.
use std::fmt;

use kefu_proto::enum_label;
use kefu_proto::v1::{Priority, TicketStatus, VipTier};
use kefu_storage::{AuditRecord, HandlerMove, TicketChange, TicketRecord};

/// The actor of the changes the SLA policy makes.
pub const SLA_POLICY_ACTOR: &str = "sla-policy";

/// A change the rules refuse, and why; the service answers it as FAILED_PRECONDITION.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// The lifecycle has no such move.
    NoSuchMove {
        ticket_id: String,
        from: i32,
        to: TicketStatus,
    },
    /// The ticket did not come from a conversation.
    NoConversation,
    /// Resolved or closed: an agent reopens it before writing to the customer.
    NotUnresolved { ticket_id: String, status: i32 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSuchMove {
                ticket_id,
                from,
                to,
            } => write!(
                f,
                "ticket {ticket_id} cannot move from {} to {}",
                status_name(*from),
                to.as_str_name()
            ),
            Refusal::NoConversation => f.write_str("the ticket has no conversation to reply to"),
            Refusal::NotUnresolved { ticket_id, status } => write!(
                f,
                "ticket {ticket_id} is {}; reopen it to write to the customer",
                status_name(*status)
            ),
        }
    }
}

/// A change to write and the audit row that records it.
pub type Decision = (TicketChange, AuditRecord);

/// The lifecycle: which status may follow which. Reopening is resolved/closed -> open.
pub fn can_transition(from: TicketStatus, to: TicketStatus) -> bool {
    use TicketStatus::*;
    matches!(
        (from, to),
        (Open, InProgress | Pending | Resolved | Closed)
            | (InProgress, Open | Pending | Resolved | Closed)
            | (Pending, InProgress | Resolved | Closed)
            | (Resolved, Closed | Open)
            | (Closed, Open)
    )
}

/// Whether a ticket in this status is still waiting for or being worked by a human.
pub fn is_unresolved(status: TicketStatus) -> bool {
    matches!(
        status,
        TicketStatus::Open | TicketStatus::InProgress | TicketStatus::Pending
    )
}

fn status_of(ticket: &TicketRecord) -> TicketStatus {
    TicketStatus::try_from(ticket.status).unwrap_or_default()
}

fn status_name(status: i32) -> &'static str {
    TicketStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// `high` for PRIORITY_HIGH: audit comments and metric labels.
pub fn priority_label(priority: i32) -> String {
    enum_label(
        Priority::try_from(priority)
            .unwrap_or_default()
            .as_str_name(),
        "PRIORITY_",
    )
}

/// Moves `current` to `to` by `actor`. Resolving stamps the resolution time (closing
/// keeps an earlier one); reopening clears the assignee, so the ticket queues again;
/// starting work on a ticket nobody holds assigns it to the actor, unless `assignee`
/// names someone.
pub fn transition(
    current: &TicketRecord,
    to: TicketStatus,
    assignee: Option<&str>,
    actor: &str,
    comment: &str,
    now: i64,
) -> Result<Decision, Refusal> {
    let from = status_of(current);
    if !can_transition(from, to) {
        return Err(Refusal::NoSuchMove {
            ticket_id: current.ticket_id.clone(),
            from: current.status,
            to,
        });
    }
    let mut change = TicketChange::from_current(current, now);
    change.status = to as i32;
    change.resolved_at = match to {
        TicketStatus::Resolved => Some(now),
        TicketStatus::Closed => current.resolved_at.or(Some(now)),
        _ => None,
    };
    change.assignee = match (to, assignee) {
        (_, Some(agent)) => agent.to_owned(),
        (TicketStatus::Open, None) => String::new(),
        (TicketStatus::InProgress, None) if current.assignee.is_empty() => actor.to_owned(),
        _ => current.assignee.clone(),
    };
    let action = if !is_unresolved(from) && to == TicketStatus::Open {
        "reopened"
    } else if change.assignee != current.assignee && !change.assignee.is_empty() {
        "assigned"
    } else {
        "transition"
    };
    let audit = AuditRecord {
        actor: actor.to_owned(),
        action: action.to_owned(),
        from_status: from as i32,
        to_status: to as i32,
        comment: comment.to_owned(),
        at: now,
    };
    Ok((change, audit))
}

/// Where the session of a ticket moved to `to` goes: to the agent who took it, back to
/// the bot once it is resolved or closed; None for a ticket without a session.
pub fn session_move(ticket: &TicketRecord, to: TicketStatus) -> Option<HandlerMove> {
    if ticket.session_id.is_empty() {
        return None;
    }
    let ticket_id = ticket.ticket_id.clone();
    match to {
        TicketStatus::InProgress => Some(HandlerMove::Take { ticket_id }),
        TicketStatus::Resolved | TicketStatus::Closed => Some(HandlerMove::Release { ticket_id }),
        _ => None,
    }
}

/// Raises an unresolved ticket to `to` with the caller's reason; None when it is
/// resolved or already at least that urgent.
pub fn raise_priority(
    current: &TicketRecord,
    to: Priority,
    actor: &str,
    reason: &str,
    now: i64,
) -> Option<Decision> {
    if !is_unresolved(status_of(current)) || current.priority >= to as i32 {
        return None;
    }
    Some(priority_change(current, to, actor, reason, now))
}

/// A new ticket's priority: the requested one, one step up for a Gold or Platinum
/// customer (urgent stays urgent).
pub fn opening_priority(requested: Priority, vip_tier: i32) -> Priority {
    if vip_tier >= VipTier::Gold as i32 {
        one_step_up(requested)
    } else {
        requested
    }
}

/// One priority step up (urgent stays urgent).
pub fn one_step_up(priority: Priority) -> Priority {
    match priority {
        Priority::Unspecified | Priority::Low => Priority::Medium,
        Priority::Medium => Priority::High,
        Priority::High | Priority::Urgent => Priority::Urgent,
    }
}

/// Whether the SLA policy acts on the ticket: still unresolved, no agent has written
/// to the customer, not raised by the policy before, and 80% of its SLA has passed.
pub fn sla_at_risk(ticket: &TicketRecord, now: i64) -> bool {
    let allowed = ticket.sla_due_at - ticket.created_at;
    is_unresolved(status_of(ticket))
        && ticket.first_response_at.is_none()
        && !ticket.sla_raised
        && ticket.created_at + allowed * 4 / 5 <= now
}

/// The SLA policy: a ticket at risk goes one priority step up, once (an urgent one
/// stays urgent but is marked as raised all the same).
pub fn sla_raise(current: &TicketRecord, now: i64) -> Option<Decision> {
    if !sla_at_risk(current, now) {
        return None;
    }
    let to = one_step_up(Priority::try_from(current.priority).unwrap_or_default());
    let reason = "80% of the SLA passed without a reply";
    let (mut change, audit) = priority_change(current, to, SLA_POLICY_ACTOR, reason, now);
    change.sla_raised = true;
    Some((change, audit))
}

fn priority_change(
    current: &TicketRecord,
    to: Priority,
    actor: &str,
    reason: &str,
    now: i64,
) -> Decision {
    let mut change = TicketChange::from_current(current, now);
    change.priority = to as i32;
    let audit = AuditRecord {
        actor: actor.to_owned(),
        action: "priority_raised".into(),
        from_status: current.status,
        to_status: current.status,
        comment: format!(
            "{} -> {}: {reason}",
            priority_label(current.priority),
            priority_label(to as i32)
        ),
        at: now,
    };
    (change, audit)
}

/// An agent may write to the customer of an unresolved ticket that came from a
/// conversation.
pub fn may_reply(ticket: &TicketRecord) -> Result<(), Refusal> {
    if ticket.session_id.is_empty() {
        return Err(Refusal::NoConversation);
    }
    if !is_unresolved(status_of(ticket)) {
        return Err(Refusal::NotUnresolved {
            ticket_id: ticket.ticket_id.clone(),
            status: ticket.status,
        });
    }
    Ok(())
}

/// An agent who writes to the customer of an open ticket nobody holds takes it.
pub fn reply_takes_ticket(ticket: &TicketRecord) -> bool {
    status_of(ticket) == TicketStatus::Open && ticket.assignee.is_empty()
}

/// Resolved after its deadline, or still open past it.
pub fn sla_breached(ticket: &TicketRecord, now: i64) -> bool {
    match ticket.resolved_at {
        Some(resolved) => resolved > ticket.sla_due_at,
        None => is_unresolved(status_of(ticket)) && now > ticket.sla_due_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// An open, unassigned medium ticket of a conversation, created at 0, due in 10 hours.
    fn ticket() -> TicketRecord {
        TicketRecord {
            tenant_id: "t".into(),
            ticket_id: "T1".into(),
            customer_id: "c".into(),
            session_id: "s".into(),
            subject: "refund".into(),
            description: String::new(),
            status: TicketStatus::Open as i32,
            priority: Priority::Medium as i32,
            intent: String::new(),
            channel: 0,
            assignee: String::new(),
            vip_tier: 0,
            escalation_reason: String::new(),
            idempotency_key: None,
            created_at: 0,
            updated_at: 0,
            sla_due_at: 10 * HOUR,
            resolved_at: None,
            version: 3,
            first_response_at: None,
            sla_raised: false,
        }
    }

    #[test]
    fn gold_and_platinum_customers_open_one_step_up_capped_at_urgent() {
        for (requested, tier, opened) in [
            (Priority::Low, VipTier::Platinum, Priority::Medium),
            (Priority::Medium, VipTier::Gold, Priority::High),
            (Priority::Urgent, VipTier::Platinum, Priority::Urgent),
            (Priority::Low, VipTier::Silver, Priority::Low),
            (Priority::High, VipTier::None, Priority::High),
            (Priority::High, VipTier::Unspecified, Priority::High),
        ] {
            assert_eq!(
                opening_priority(requested, tier as i32),
                opened,
                "{requested:?} for {tier:?}"
            );
        }
    }

    fn with_status(status: TicketStatus) -> TicketRecord {
        TicketRecord {
            status: status as i32,
            ..ticket()
        }
    }

    #[test]
    fn lifecycle_allows_only_valid_moves() {
        use TicketStatus::*;
        assert!(can_transition(Open, InProgress));
        assert!(can_transition(Resolved, Open), "reopen");
        assert!(can_transition(Closed, Open), "reopen");
        assert!(!can_transition(Closed, Resolved));
        assert!(!can_transition(Open, Open));
        assert!(!can_transition(Pending, Open));
        assert!(!can_transition(Unspecified, Open));
    }

    #[test]
    fn an_invalid_move_is_refused_with_both_statuses_named() {
        let refusal = transition(
            &with_status(TicketStatus::Closed),
            TicketStatus::Resolved,
            None,
            "ann",
            "",
            5,
        )
        .unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "ticket T1 cannot move from TICKET_STATUS_CLOSED to TICKET_STATUS_RESOLVED"
        );
    }

    #[test]
    fn starting_work_on_an_unheld_ticket_assigns_it_to_the_actor() {
        let (change, audit) =
            transition(&ticket(), TicketStatus::InProgress, None, "ann", "mine", 7).unwrap();
        assert_eq!(change.status, TicketStatus::InProgress as i32);
        assert_eq!(change.assignee, "ann");
        assert_eq!(change.updated_at, 7);
        assert_eq!(
            audit,
            AuditRecord {
                actor: "ann".into(),
                action: "assigned".into(),
                from_status: TicketStatus::Open as i32,
                to_status: TicketStatus::InProgress as i32,
                comment: "mine".into(),
                at: 7,
            }
        );
        let held = TicketRecord {
            assignee: "bob".into(),
            ..ticket()
        };
        let (change, audit) =
            transition(&held, TicketStatus::InProgress, None, "ann", "", 7).unwrap();
        assert_eq!(change.assignee, "bob", "another's ticket stays theirs");
        assert_eq!(audit.action, "transition");
        let (change, _) =
            transition(&held, TicketStatus::InProgress, Some("cy"), "cy", "", 7).unwrap();
        assert_eq!(
            change.assignee, "cy",
            "taking from the queue names the agent"
        );
    }

    #[test]
    fn resolving_stamps_the_time_closing_keeps_it_and_reopening_queues_again() {
        let working = TicketRecord {
            assignee: "ann".into(),
            ..with_status(TicketStatus::InProgress)
        };
        let (resolved, _) =
            transition(&working, TicketStatus::Resolved, None, "ann", "", 20).unwrap();
        assert_eq!(resolved.resolved_at, Some(20));
        assert_eq!(resolved.assignee, "ann");

        let done = TicketRecord {
            resolved_at: Some(20),
            ..with_status(TicketStatus::Resolved)
        };
        let (closed, _) = transition(&done, TicketStatus::Closed, None, "ann", "", 30).unwrap();
        assert_eq!(closed.resolved_at, Some(20));
        let (closed, _) = transition(&working, TicketStatus::Closed, None, "ann", "", 30).unwrap();
        assert_eq!(
            closed.resolved_at,
            Some(30),
            "closed unresolved: closed now"
        );

        let (reopened, audit) =
            transition(&done, TicketStatus::Open, None, "bob", "again", 40).unwrap();
        assert_eq!(reopened.resolved_at, None);
        assert_eq!(reopened.assignee, "", "back in the queue");
        assert_eq!(audit.action, "reopened");
        assert_eq!(audit.actor, "bob");
    }

    #[test]
    fn the_session_follows_its_ticket_to_the_agent_and_back_to_the_bot() {
        assert!(matches!(
            session_move(&ticket(), TicketStatus::InProgress),
            Some(HandlerMove::Take { ticket_id }) if ticket_id == "T1"
        ));
        for done in [TicketStatus::Resolved, TicketStatus::Closed] {
            assert!(matches!(
                session_move(&ticket(), done),
                Some(HandlerMove::Release { ticket_id }) if ticket_id == "T1"
            ));
        }
        assert!(session_move(&ticket(), TicketStatus::Pending).is_none());
        let no_session = TicketRecord {
            session_id: String::new(),
            ..ticket()
        };
        assert!(session_move(&no_session, TicketStatus::InProgress).is_none());
    }

    #[test]
    fn a_priority_is_raised_only_upwards_and_only_while_unresolved() {
        let (change, audit) = raise_priority(&ticket(), Priority::Urgent, "ann", "angry", 9)
            .expect("medium -> urgent");
        assert_eq!(change.priority, Priority::Urgent as i32);
        assert!(
            !change.sla_raised,
            "a raise by hand leaves the SLA policy its turn"
        );
        assert_eq!(audit.action, "priority_raised");
        assert_eq!(audit.comment, "medium -> urgent: angry");
        assert_eq!(audit.from_status, audit.to_status);
        assert_eq!(
            raise_priority(&ticket(), Priority::Medium, "ann", "same", 9),
            None
        );
        assert_eq!(
            raise_priority(&ticket(), Priority::Low, "ann", "down", 9),
            None
        );
        let resolved = with_status(TicketStatus::Resolved);
        assert_eq!(
            raise_priority(&resolved, Priority::Urgent, "ann", "late", 9),
            None
        );
    }

    #[test]
    fn raising_climbs_one_step_and_stops_at_urgent() {
        assert_eq!(one_step_up(Priority::Low), Priority::Medium);
        assert_eq!(one_step_up(Priority::Medium), Priority::High);
        assert_eq!(one_step_up(Priority::High), Priority::Urgent);
        assert_eq!(one_step_up(Priority::Urgent), Priority::Urgent);
    }

    #[test]
    fn the_sla_policy_raises_an_unanswered_ticket_once_at_80_percent() {
        assert_eq!(sla_raise(&ticket(), 8 * HOUR - 1), None, "before 80%");
        let (change, audit) = sla_raise(&ticket(), 8 * HOUR).expect("at 80%");
        assert_eq!(change.priority, Priority::High as i32);
        assert!(change.sla_raised);
        assert_eq!(audit.actor, SLA_POLICY_ACTOR);
        assert_eq!(
            audit.comment,
            "medium -> high: 80% of the SLA passed without a reply"
        );
        let raised = TicketRecord {
            sla_raised: true,
            ..ticket()
        };
        assert_eq!(sla_raise(&raised, 9 * HOUR), None, "once");
        let answered = TicketRecord {
            first_response_at: Some(HOUR),
            ..ticket()
        };
        assert_eq!(sla_raise(&answered, 9 * HOUR), None);
        let resolved = with_status(TicketStatus::Resolved);
        assert_eq!(sla_raise(&resolved, 9 * HOUR), None);
        let urgent = TicketRecord {
            priority: Priority::Urgent as i32,
            ..ticket()
        };
        let (change, _) = sla_raise(&urgent, 9 * HOUR).expect("marked as raised");
        assert_eq!(change.priority, Priority::Urgent as i32);
        assert!(change.sla_raised);
    }

    #[test]
    fn an_agent_writes_only_to_an_unresolved_conversation_and_takes_an_unheld_one() {
        assert_eq!(may_reply(&ticket()), Ok(()));
        assert!(reply_takes_ticket(&ticket()));
        let held = TicketRecord {
            assignee: "bob".into(),
            ..ticket()
        };
        assert!(!reply_takes_ticket(&held));
        assert!(!reply_takes_ticket(&with_status(TicketStatus::Pending)));
        let no_session = TicketRecord {
            session_id: String::new(),
            ..ticket()
        };
        assert_eq!(may_reply(&no_session), Err(Refusal::NoConversation));
        let closed = with_status(TicketStatus::Closed);
        assert_eq!(
            may_reply(&closed).unwrap_err().to_string(),
            "ticket T1 is TICKET_STATUS_CLOSED; reopen it to write to the customer"
        );
    }

    #[test]
    fn the_sla_is_breached_when_resolved_late_or_still_open_past_the_deadline() {
        let due = ticket().sla_due_at;
        assert!(!sla_breached(&ticket(), due));
        assert!(sla_breached(&ticket(), due + 1));
        let on_time = TicketRecord {
            resolved_at: Some(due),
            ..with_status(TicketStatus::Resolved)
        };
        assert!(!sla_breached(&on_time, due + HOUR));
        let late = TicketRecord {
            resolved_at: Some(due + 1),
            ..with_status(TicketStatus::Closed)
        };
        assert!(sla_breached(&late, due + 1));
        let closed_unresolved = with_status(TicketStatus::Closed);
        assert!(!sla_breached(&closed_unresolved, due + HOUR));
    }
}
