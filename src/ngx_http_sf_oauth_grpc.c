
/*
 * The Pub/Sub API (gRPC, api.pubsub.salesforce.com:7443) behind
 * grpc_pass: which locations and calls are gRPC, a unary call's body read
 * whole before grpc_pass sends it, and whether a call's status says that
 * the token is dead.
 *
 * A location is a Pub/Sub location when its content handler is
 * grpc_pass's, with a URL (grpc's location configuration then has its
 * upstream; Pub/Sub has one address, so no variable is needed).  The
 * session travels in the metadata, not in Authorization: accesstoken,
 * instanceurl and tenantid (the org id), which
 * ngx_http_sf_oauth_inject.c puts on the upstream request, and takes off
 * again, as it does Authorization for REST.  The client's own metadata
 * of those names, and its Authorization, never go on.
 *
 * A dead token: grpc-status 16 (UNAUTHENTICATED) with an error-code of
 * sfdc.platform.eventbus.grpc.service.auth.error or
 * ...auth.refresh.invalid, in a trailers-only answer (:status 200, the
 * status in the response header, no body) or in the trailers of a stream.
 *
 *   - A unary call (GetTopic, GetSchema, Publish) is read whole before
 *     grpc_pass runs, as proxy_request_buffering reads a REST body: in
 *     memory up to client_body_buffer_size, then in a temp file, and
 *     client_max_body_size refuses a bigger one with 413.  grpc_pass then
 *     sends it as a buffered body, and its trailers-only 16 is held and
 *     the call replayed with a new token, as a REST 401 is
 *     (ngx_http_sf_oauth_filter.c, ngx_http_sf_oauth_wait.c).
 *   - A stream (Subscribe, PublishStream, ManagedSubscribe, any other
 *     method) has its body streamed, and its events may have reached the
 *     client already: its 16 passes to the client unchanged, and the
 *     token is dropped by the generation rule, so that the client's own
 *     retry gets the new token (ngx_http_sf_oauth_handler.c).
 *   - Any other status, or 16 with another error-code, passes untouched.
 */


#include "ngx_http_sf_oauth.h"


static void ngx_http_sf_oauth_grpc_call_read(ngx_http_request_t *r);
static ngx_uint_t ngx_http_sf_oauth_grpc_is(ngx_table_elt_t *h,
    ngx_str_t *name, ngx_str_t *value);


/* the Pub/Sub keepalive comes within 270 s */
#define NGX_HTTP_SF_OAUTH_GRPC_KEEPALIVE  270000


static ngx_str_t  ngx_http_sf_oauth_grpc_unary_calls[] = {
    ngx_string("/eventbus.v1.PubSub/GetTopic"),
    ngx_string("/eventbus.v1.PubSub/GetSchema"),
    ngx_string("/eventbus.v1.PubSub/Publish"),
    ngx_null_string
};


static ngx_str_t  ngx_http_sf_oauth_grpc_auth_errors[] = {
    ngx_string("sfdc.platform.eventbus.grpc.service.auth.error"),
    ngx_string("sfdc.platform.eventbus.grpc.service.auth.refresh.invalid"),
    ngx_null_string
};


/*
 * At the merge of a location whose content handler sf_oauth wraps:
 * whether it is grpc_pass's, and what cannot work there.
 */

char *
ngx_http_sf_oauth_grpc_conf(ngx_conf_t *cf,
    ngx_http_sf_oauth_loc_conf_t *slcf, ngx_http_core_loc_conf_t *clcf)
{
    ngx_http_upstream_conf_t  *ucf;

    /* ngx_http_grpc_loc_conf_t starts with its ngx_http_upstream_conf_t */
    ucf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_grpc_module);

    if (ucf == NULL || ucf->upstream == NULL) {
        return NGX_CONF_OK;
    }

    slcf->grpc = 1;

    if (ucf->read_timeout < NGX_HTTP_SF_OAUTH_GRPC_KEEPALIVE) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "sf_oauth \"%V\" in the gRPC location \"%V\" (%s:%ui): "
                      "grpc_read_timeout is %Mms, and a Pub/Sub Subscribe "
                      "stream is silent for up to 270 s between keepalives: "
                      "set \"grpc_read_timeout 300s;\" (and "
                      "grpc_send_timeout, client_body_timeout) there",
                      &slcf->name, &clcf->name, slcf->file, slcf->line,
                      ucf->read_timeout);
    }

    return NGX_CONF_OK;
}


/* whether the request is a unary call of the Pub/Sub API */

ngx_uint_t
ngx_http_sf_oauth_grpc_unary(ngx_http_request_t *r)
{
    ngx_str_t  *call;

    if (r->method != NGX_HTTP_POST) {
        return 0;
    }

    for (call = ngx_http_sf_oauth_grpc_unary_calls; call->len; call++) {
        if (r->uri.len == call->len
            && ngx_strncmp(r->uri.data, call->data, call->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


/*
 * A unary call's body is read whole first, buffered as a REST body is
 * (client_body_buffer_size, a temp file past it, client_max_body_size's
 * 413): then the content handler runs again, and grpc_pass finds the body
 * read and sends it buffered, so that a replay sends it again.
 */

ngx_int_t
ngx_http_sf_oauth_grpc_read_call(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    r->request_body_no_buffering = 0;

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_sf_oauth_grpc_call_read);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static void
ngx_http_sf_oauth_grpc_call_read(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, r->content_handler(r));
}


/*
 * Before grpc_pass sends a call's body again (a replay): a body in a temp
 * file is read through r->request_body->buf, which
 * ngx_http_upstream_init_request() gives each upstream as its output
 * buffer, pos and last reset but not its flags.  The first upstream left
 * last_buf set there, from the body's last buffer; grpc_pass would end the
 * stream (END_STREAM) after the first 8 KB of the replay.  A body in
 * memory is its own buffers, and keeps its flags.
 */

void
ngx_http_sf_oauth_grpc_reuse_body(ngx_http_request_t *r)
{
    ngx_buf_t  *b;

    if (r->request_body == NULL
        || r->request_body->temp_file == NULL
        || r->request_body->buf == NULL)
    {
        return;
    }

    b = r->request_body->buf;

    b->last_buf = 0;
    b->last_in_chain = 0;
    b->flush = 0;
}


/*
 * Whether a header list (a trailers-only answer's header, or a stream's
 * trailers) says that the token is dead: grpc-status 16 with one of the
 * Pub/Sub API's auth error-codes.
 */

ngx_uint_t
ngx_http_sf_oauth_grpc_dead(ngx_list_t *headers)
{
    ngx_str_t        *code;
    ngx_uint_t        i, status, auth;
    ngx_table_elt_t  *h;
    ngx_list_part_t  *part;

    static ngx_str_t  grpc_status = ngx_string("grpc-status");
    static ngx_str_t  unauthenticated = ngx_string("16");
    static ngx_str_t  error_code = ngx_string("error-code");

    status = 0;
    auth = 0;

    for (part = &headers->part; part; part = part->next) {
        h = part->elts;

        for (i = 0; i < part->nelts; i++) {

            if (h[i].hash == 0) {
                continue;
            }

            if (ngx_http_sf_oauth_grpc_is(&h[i], &grpc_status, NULL)) {
                status = ngx_http_sf_oauth_grpc_is(&h[i], &grpc_status,
                                                   &unauthenticated);
                continue;
            }

            if (!ngx_http_sf_oauth_grpc_is(&h[i], &error_code, NULL)) {
                continue;
            }

            auth = 0;

            for (code = ngx_http_sf_oauth_grpc_auth_errors; code->len; code++)
            {
                if (ngx_http_sf_oauth_grpc_is(&h[i], &error_code, code)) {
                    auth = 1;
                    break;
                }
            }
        }
    }

    return status && auth;
}


/* whether a header is "name", and has "value" if one is given */

static ngx_uint_t
ngx_http_sf_oauth_grpc_is(ngx_table_elt_t *h, ngx_str_t *name,
    ngx_str_t *value)
{
    if (h->key.len != name->len
        || ngx_strncasecmp(h->key.data, name->data, name->len) != 0)
    {
        return 0;
    }

    if (value == NULL) {
        return 1;
    }

    return h->value.len == value->len
           && ngx_strncmp(h->value.data, value->data, value->len) == 0;
}
