-- Cancelling a job a node holds (claimed or running; issue 13). The
-- operator's cancel (operations.sql request_cancel) cannot end the row
-- itself: the job may still be running on its node, and a cancelled row
-- retried at once could then run on two nodes. It records the request in
-- cancel_requested_at and tells the owning node (a NOTIFY; each heartbeat
-- renewal reads the column too, as the fallback). The node kills the
-- worker and reports the attempt's end under the lease, as for a timeout.
--
-- Whatever ends the attempt then (that failure, a retryable or final
-- failure the job raised first, a hand-back of a job that never started,
-- another node's rescue after this one died), the job must not run again.
-- Rather than a branch in each of those statements, one trigger turns any
-- such end of a job asked to cancel into cancelled. Its WHEN is a test of
-- two columns of the new row, evaluated without calling the function, so
-- the hot path's updates pay nothing more. A job that completed before its
-- kill took effect stays completed (its result is real); an operator's
-- retry clears the request (operations.sql retry_jobs).
--
-- No index is added: the node reads the request of jobs it holds by their
-- ids, and a completion writes no indexed column (0003) as before.

ALTER TABLE forge_jobs ADD COLUMN cancel_requested_at timestamptz;

CREATE FUNCTION forge_cancel_requested() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := 'cancelled';
    NEW.cancelled_at := now();
    NEW.failed_at := NULL;  -- not a failure: out of the dead letter sweep's index
    RETURN NEW;
END
$$;

CREATE TRIGGER forge_jobs_cancel_requested
    BEFORE UPDATE ON forge_jobs
    FOR EACH ROW
    WHEN (NEW.cancel_requested_at IS NOT NULL AND NEW.status IN ('pending', 'retry', 'failed'))
    EXECUTE FUNCTION forge_cancel_requested();
