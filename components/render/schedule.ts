import { nextElapse, parseCalendar } from "../../runner/config/calendar.ts";
import { formatDuration, parseDuration } from "../../runner/config/duration.ts";
import type { Policy } from "../../runner/config/schema.ts";

export interface ScheduleSummary {
  /** The OnCalendar= expression in systemd's normalized form. */
  onCalendar: string;
  randomizedDelay: string;
  /**
   * The next elapse after `now` (ISO 8601, UTC), without the randomized delay. Computed when the program
   * runs, in the deploying machine's time zone unless the expression names one; the host's
   * `systemctl list-timers` is the authority.
   */
  nextRun: string | null;
}

export function scheduleSummary(policy: Pick<Policy, "schedule" | "randomizedDelay">, now: Date): ScheduleSummary {
  const spec = parseCalendar(policy.schedule);
  const next = nextElapse(spec, now);
  return {
    onCalendar: spec.normalized,
    randomizedDelay: formatDuration(parseDuration(policy.randomizedDelay)),
    nextRun: next ? next.toISOString() : null,
  };
}
