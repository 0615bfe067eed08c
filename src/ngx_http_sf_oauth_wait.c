
/*
 * Waiting and replay: what follows from the zone's answer to a request's
 * lookup (the token, a refresh started, a wait, or what the 502 says), the
 * wait for a refresh, and the hold and replay of a request whose token
 * Salesforce refused (the 401 that ngx_http_sf_oauth_filter.c swallows).
 * A request resumes where nginx stopped it: the phases, or the location's
 * content handler for a replay.
 *
 * A waiting request is suspended without blocking the worker.  It is woken
 * by an event: at once when this worker's own token request completes, or
 * by a short timer (5 ms, backing off to 50 ms) that re-reads the zone
 * while another worker refreshes.  Each waiter has a deadline.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_arm_wait(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_wake_waiter(ngx_event_t *ev);
static void ngx_http_sf_oauth_undo_hold(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_replay_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_stop_wait(ngx_http_sf_oauth_ctx_t *ctx);
static void ngx_http_sf_oauth_drop_send_timeout(ngx_http_request_t *r);


static ngx_str_t  ngx_http_sf_oauth_error_start =
    ngx_string("the token request could not be started");
static ngx_str_t  ngx_http_sf_oauth_error_timeout =
    ngx_string("timed out waiting for the token refresh");


/*
 * One zone lookup and what follows from it: NGX_DECLINED with the header
 * set, NGX_AGAIN while waiting, or NGX_HTTP_BAD_GATEWAY with lk->error.
 */

ngx_int_t
ngx_http_sf_oauth_wait_ask_zone(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_http_sf_oauth_lookup_t *lk)
{
    ngx_int_t  rc;

    rc = ngx_http_sf_oauth_store_lookup(ctx->cred, r->pool, lk);

    return ngx_http_sf_oauth_wait_follow_answer(r, ctx, rc, lk);
}


/* what follows from the answer "rc" of a zone lookup */

ngx_int_t
ngx_http_sf_oauth_wait_follow_answer(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx, ngx_int_t rc, ngx_http_sf_oauth_lookup_t *lk)
{
    switch (rc) {

    case NGX_HTTP_SF_OAUTH_GOT_TOKEN:

        /* the header gets it in the content phase, not before */
        ctx->authorization = lk->authorization;
        ctx->generation = lk->generation;
        ctx->token_ms = lk->token_ms;
        ctx->token_adopted = lk->token_adopted ? 1 : 0;

        if (ctx->status == 0) {
            ctx->status = NGX_HTTP_SF_OAUTH_HIT;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": token generation %ui",
                       &ctx->cred->name, lk->generation);

        return NGX_DECLINED;

    case NGX_HTTP_SF_OAUTH_GOT_ERROR:

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": no token: %V, retry "
                       "after %T s", &ctx->cred->name, &lk->error,
                       lk->retry_after);

        return NGX_HTTP_BAD_GATEWAY;

    case NGX_HTTP_SF_OAUTH_GOT_LEASE:

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": this worker took the "
                       "refresh lease", &ctx->cred->name);

        if (ngx_http_sf_oauth_refresh_start(ctx->cred, lk) != NGX_OK) {
            lk->error = ngx_http_sf_oauth_error_start;
            lk->retry_after = 1;
            return NGX_HTTP_BAD_GATEWAY;
        }

        /* fall through */

    case NGX_HTTP_SF_OAUTH_GOT_WAIT:

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": no token yet, the "
                       "refresh is another's", &ctx->cred->name);

        return ngx_http_sf_oauth_arm_wait(r, ctx);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_sf_oauth_arm_wait(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->waiter.event.handler == NULL) {
        ctx->waiter.event.handler = ngx_http_sf_oauth_wake_waiter;
        ctx->waiter.event.data = r->connection;
        ctx->waiter.event.log = r->connection->log;
    }

    if (!ctx->wait_begun) {
        ctx->wait_begun = 1;
        ctx->deadline = ngx_current_msec + ctx->cred->timeout
                        + 2 * NGX_HTTP_SF_OAUTH_LEASE_SLACK;

        if (ngx_http_sf_oauth_fleet_on(ctx->cred)) {
            /* and the takeover of a dead node's lease in the fleet */
            ctx->deadline += ctx->cred->timeout
                             + NGX_HTTP_SF_OAUTH_LEASE_SLACK;
        }
        ctx->poll = NGX_HTTP_SF_OAUTH_POLL_MIN;

        if (ctx->status == 0) {
            ctx->status = NGX_HTTP_SF_OAUTH_WAIT;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": waiting for a token",
                       &ctx->cred->name);
    }

    if (!ctx->waiting) {
        ctx->waiting = 1;
        ngx_queue_insert_tail(&ctx->cred->rt.waiters, &ctx->waiter.queue);
    }

    ngx_add_timer(&ctx->waiter.event, ctx->poll);

    ctx->poll = ngx_min(ctx->poll * 2, NGX_HTTP_SF_OAUTH_POLL_MAX);

    if (!ctx->held) {
        /* a client that goes away while waiting is noticed and finalized */
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
    }

    /*
     * A held request keeps the handlers nginx gave it: the upstream's
     * while it drains the 401, then ngx_http_writer and
     * ngx_http_test_reading once it is parked.
     */

    return NGX_AGAIN;
}


/*
 * The header filter swallowed a 401 from Salesforce for this request and
 * holds it (see ngx_http_sf_oauth_filter.c).  It waits for a token like a
 * cold request, woken by the same events, and is then replayed.  The first
 * look at the zone is posted, never done in the filter's own call stack.
 */

ngx_int_t
ngx_http_sf_oauth_wait_hold(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_int_t    rc;
    ngx_msec_t   until;
    ngx_time_t  *tp;

    rc = ngx_http_sf_oauth_store_rejected(ctx->cred, ctx->generation,
                                          &until);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": 401 to token generation "
                   "%ui held (replay %ui), the store says %s",
                   &ctx->cred->name, ctx->generation, ctx->replays + 1,
                   rc == NGX_HTTP_SF_OAUTH_REJ_NEWER
                   ? "a newer token is there"
                   : rc == NGX_HTTP_SF_OAUTH_REJ_DROPPED
                     ? "the token is dropped, a refresh follows"
                     : "no refresh yet: 401s lately outlived refreshes");

    ngx_http_sf_oauth_store_count(ctx->cred, NGX_HTTP_SF_OAUTH_COUNT_REPLAYS);

    if (!ctx->replayed) {
        ctx->rejected_ms = ngx_http_sf_oauth_wall_ms(tp);
    }

    /* the token that failed is no longer the request's */
    ctx->token_ms = 0;
    ctx->token_adopted = 0;

    ctx->noted = 1;
    ctx->held = 1;
    ctx->status = NGX_HTTP_SF_OAUTH_RETRY;
    ctx->limit_rate = r->limit_rate;
    ctx->limit_rate_set = r->limit_rate_set;

    r->preserve_body = 1;
    r->buffered |= NGX_HTTP_SF_OAUTH_BUFFERED;

    ctx->wait_begun = 0;

    if (ngx_http_sf_oauth_arm_wait(r, ctx) != NGX_AGAIN) {
        return NGX_ERROR;
    }

    if (rc == NGX_HTTP_SF_OAUTH_REJ_LATER) {
        /* a 401 that refreshes did not cure lately: ask again at "until" */
        ctx->later = 1;
        ctx->rejected_until = until;
        ctx->deadline += until - ngx_current_msec;

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "sf_oauth: credential \"%V\": 401 held, the next "
                       "refresh in %M ms", &ctx->cred->name,
                       until - ngx_current_msec);
    }

    ngx_http_sf_oauth_timer_post(&ctx->waiter.event);

    return NGX_OK;
}


/*
 * A CometD /meta/connect answered "401::...": the client's session on
 * Salesforce's side is gone with its token, and a replay of the connect
 * cannot bring it back.  The token is dropped by the same rule as a 401's
 * (the generation compared, refreshes that did not cure lately waited
 * out), and the response goes on, its advice rewritten by the filter: the
 * client's handshake that follows waits for the refresh as any request
 * does, and gets the new token.
 */

void
ngx_http_sf_oauth_wait_reconnect(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_int_t   rc;
    ngx_msec_t  until;

    rc = ngx_http_sf_oauth_store_rejected(ctx->cred, ctx->generation,
                                          &until);

    ctx->noted = 1;

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "sf_oauth: credential \"%V\": a CometD /meta/connect "
                  "said the session of token generation %ui is dead: the "
                  "client is told to handshake again (advice reconnect "
                  "\"handshake\"), %s", &ctx->cred->name, ctx->generation,
                  rc == NGX_HTTP_SF_OAUTH_REJ_NEWER
                  ? "a newer token is there"
                  : rc == NGX_HTTP_SF_OAUTH_REJ_DROPPED
                    ? "the token is dropped or already being refreshed"
                    : "no refresh yet: 401s lately outlived refreshes");
}


/*
 * Whether a replay's token was got before the request's first 401 came:
 * another worker's or node's refresh, found newer than the token that
 * failed.  Then a 401 to the replay says that this token died too (two
 * revocations while the request was under way, or a node that had not
 * yet learned the fleet's newest token), not that no refresh cures this
 * 401: the request is held once more, and replayed with the newest token,
 * as a rule got after its 401.  A request never has more than two
 * replays.
 *
 * The same for a token that this zone did not get by a token request but
 * took from a record (another node's, from Redis; a reload's carry; the
 * state file), whenever it was got: a request held on this node for the
 * fleet's refresh may be replayed with it after Salesforce revoked again
 * (a revoke while the fleet had no primary, or one that came before this
 * node learned the token), and the node that got it may not have seen it
 * die yet.  The 401 to such a replay drops that token by the generation
 * rule, and the second replay has a token got after it.
 *
 * And the same for this zone's own token, got after the request's 401,
 * once another replay succeeded with it (the store's "cured"): it cured
 * a 401, so a 401 to this replay says that it died since (a revoke while
 * this request's replay was on its way), not that no refresh cures it.
 * Only this zone's own token that cured nothing yet, got for the
 * request, makes a 401 to its replay pass as one that no refresh cures.
 *
 * Unless replays are getting 401s lately: another request's replay, with
 * a token got after its own 401, was answered 401 too and no replay has
 * succeeded since (the store's "uncured").  Then this 401 is the same
 * one that no refresh cures, and it passes at once, counted like that
 * request's: a second hold would wait for the next refresh the store
 * allows and cost a token request, only for its replay to get 401 again.
 * The store is asked once a response (the filter and the 401's note ask
 * in turn), so both see the same answer.
 *
 * What is left: with a 401 that no refresh cures, under concurrency, a
 * request whose replay's 401 comes before any other request's replay got
 * one still looks revoked twice and is held a second time, until the next
 * refresh the store allows; so is a request whose token looks older than
 * it is (clocks of a fleet's nodes apart, timer_resolution, a clock
 * stepped back).  A revoke that comes after this zone's token request
 * and before any replay with its token was answered kills a token that
 * cured nothing: the replays' 401s pass, as for a 401 that no refresh
 * cures, since nothing tells the two apart.  And while 401s are not
 * cured, a real second revocation during a slow request passes its 401
 * to that client; later requests are cured, as the store's rate limit
 * allows.
 */

ngx_uint_t
ngx_http_sf_oauth_wait_is_stale_replay(ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_uint_t  cured;

    if (ctx->replays != 1 || ctx->token_ms == 0) {
        return 0;
    }

    if (!ctx->uncured_asked) {
        ctx->uncured_asked = 1;
        ctx->uncured = (ngx_http_sf_oauth_store_uncured(ctx->cred,
                                                        ctx->generation,
                                                        &cured)
                        != 0);
        ctx->cured = (cured != 0);
    }

    if (ctx->token_ms >= ctx->rejected_ms
        && !ctx->token_adopted
        && !ctx->cured)
    {
        /* this zone's own token, got for the request: it cured nothing */
        return 0;
    }

    return !ctx->uncured;
}


/* the write handler of a parked held request: it sends nothing meanwhile */

static void
ngx_http_sf_oauth_drop_send_timeout(ngx_http_request_t *r)
{
    ngx_event_t  *wev;

    wev = r->connection->write;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: held request write event");

    if (wev->timer_set && !wev->delayed) {
        ngx_del_timer(wev);
    }
}


static void
ngx_http_sf_oauth_wake_waiter(ngx_event_t *ev)
{
    ngx_int_t                    rc;
    ngx_msec_t                   until;
    ngx_connection_t            *c;
    ngx_http_request_t          *r;
    ngx_http_sf_oauth_ctx_t     *ctx;
    ngx_http_sf_oauth_lookup_t   lk;

    ctx = (ngx_http_sf_oauth_ctx_t *)
              ((u_char *) ev - offsetof(ngx_http_sf_oauth_ctx_t, waiter.event));
    r = ctx->request;
    c = r->connection;

    ngx_http_set_log_request(c->log, r);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "sf_oauth: credential \"%V\": waiter woken%s%s",
                   &ctx->cred->name, ctx->held ? ", 401 held" : "",
                   ctx->later ? ", refresh later" : "");

    ngx_http_sf_oauth_stop_wait(ctx);

    if (ctx->held && (r->upstream == NULL || r->upstream->cleanup == NULL)) {
        /* the 401 is drained and the request parked: no send_timeout */
        r->write_event_handler = ngx_http_sf_oauth_drop_send_timeout;
        ngx_http_sf_oauth_drop_send_timeout(r);
    }

    if (ctx->later) {
        rc = NGX_HTTP_SF_OAUTH_REJ_LATER;

        if ((ngx_msec_int_t) (ctx->rejected_until - ngx_current_msec) <= 0) {
            rc = ngx_http_sf_oauth_store_rejected(ctx->cred, ctx->generation,
                                                  &until);
            if (rc == NGX_HTTP_SF_OAUTH_REJ_LATER) {
                ctx->rejected_until = until;
            }
        }

        if (rc == NGX_HTTP_SF_OAUTH_REJ_LATER
            && (ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0)
        {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                           "sf_oauth: credential \"%V\": no refresh yet, "
                           "waiting on", &ctx->cred->name);

            (void) ngx_http_sf_oauth_arm_wait(r, ctx);
            return;
        }

        ctx->later = 0;
    }

    rc = ngx_http_sf_oauth_wait_ask_zone(r, ctx, &lk);

    if (rc == NGX_AGAIN) {
        if ((ngx_msec_int_t) (ctx->deadline - ngx_current_msec) > 0) {
            return;
        }

        ngx_http_sf_oauth_stop_wait(ctx);

        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "sf_oauth: credential \"%V\": %V",
                      &ctx->cred->name, &ngx_http_sf_oauth_error_timeout);

        ngx_http_sf_oauth_store_count(ctx->cred,
                                      NGX_HTTP_SF_OAUTH_COUNT_WAIT_TIMEOUTS);

        lk.error = ngx_http_sf_oauth_error_timeout;
        lk.retry_after = 1;
        rc = NGX_HTTP_BAD_GATEWAY;
    }

    ctx->wait_begun = 0;

    if (ctx->held) {
        ngx_http_sf_oauth_undo_hold(r, ctx);
    }

    if (rc == NGX_DECLINED) {

        if (ctx->replayed) {
            ngx_http_sf_oauth_replay_request(r, ctx);

        } else {
            /* the token is known: go on with the phases where they stopped */
            r->read_event_handler = ngx_http_block_reading;
            r->write_event_handler = ngx_http_core_run_phases;
            ngx_http_core_run_phases(r);
        }

    } else if (rc == NGX_HTTP_BAD_GATEWAY) {
        (void) ngx_http_sf_oauth_fail_request(r, ctx, &lk.error,
                                              lk.retry_after);

    } else {
        ngx_http_sf_oauth_fail_end_upstream(r);
        ngx_http_finalize_request(r, rc);
    }

    ngx_http_run_posted_requests(c);
}


/*
 * Undoes what holding a 401 did to the request, so that a new response can
 * start from scratch: the replay's, or the 502.  No byte of the 401 has
 * left: it never got past this module's header filter.
 */

static void
ngx_http_sf_oauth_undo_hold(ngx_http_request_t *r, ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "sf_oauth: credential \"%V\": hold undone",
                   &ctx->cred->name);

    ctx->held = 0;
    ctx->replayed = 1;

    r->buffered &= ~NGX_HTTP_SF_OAUTH_BUFFERED;

    /* ngx_http_writer set send_timeout while the request was parked */
    if (c->write->timer_set && !c->write->delayed) {
        ngx_del_timer(c->write);
    }

    ngx_http_clean_header(r);

    r->disable_not_modified = 0;
    r->allow_ranges = 0;
    r->single_range = 0;
    r->limit_rate = ctx->limit_rate;
    r->limit_rate_set = ctx->limit_rate_set;

    /* as the content phase leaves them before a content handler runs */
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
}


/*
 * Runs the location's content handler again, the proxy's: it creates a new
 * upstream (closing one that may still drain the 401) and finds the request
 * body read already, so it sends the same method, headers and body.
 */

static void
ngx_http_sf_oauth_replay_request(ngx_http_request_t *r,
    ngx_http_sf_oauth_ctx_t *ctx)
{
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "sf_oauth: credential \"%V\": replaying the request "
                   "(replay %ui) with token generation %ui",
                   &ctx->cred->name, ctx->replays + 1, ctx->generation);

    ctx->replays++;

    ngx_http_finalize_request(r, r->content_handler(r));
}


static void
ngx_http_sf_oauth_stop_wait(ngx_http_sf_oauth_ctx_t *ctx)
{
    if (ctx->waiter.event.timer_set) {
        ngx_del_timer(&ctx->waiter.event);
    }

    if (ctx->waiter.event.posted) {
        ngx_delete_posted_event(&ctx->waiter.event);
    }

    if (ctx->waiting) {
        ngx_queue_remove(&ctx->waiter.queue);
        ctx->waiting = 0;
    }
}


/*
 * The ctx's pool cleanup (see ngx_http_sf_oauth_handler_ctx): a wait, and
 * an envelope's inflation, end with the request.
 */

void
ngx_http_sf_oauth_wait_clean_ctx(void *data)
{
    ngx_http_sf_oauth_ctx_t  *ctx = data;

    ngx_http_sf_oauth_stop_wait(ctx);

    /* a client that went away while its envelope inflated */
    if (ctx->inflating.posted) {
        ngx_delete_posted_event(&ctx->inflating);
    }

    if (ctx->inflating.timer_set) {
        ngx_del_timer(&ctx->inflating);
    }
}
