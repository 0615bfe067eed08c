
/*
 * The operator console, "sf_oauth_console;": at the location's own URI, a
 * page (or, with "Accept: application/json", a JSON) of every credential:
 * its state in the words of the people on call, the connected user and
 * org, the token's age and generation, the last error, the org's API
 * usage, the fleet's view.  Any other URI under the location is a 404
 * page, any other method a 405 page; every answer has the headers of
 * ngx_http_sf_oauth_page.c.  Secrets appear only as fingerprints.
 */


#include "ngx_http_sf_oauth.h"


/* what one credential's row or object may take, beyond its strings */
#define NGX_HTTP_SF_OAUTH_CONSOLE_FIXED  3072


typedef struct {
    ngx_http_sf_oauth_cred_t    *cred;
    ngx_http_sf_oauth_node_t    *node;
    const char                  *state;
    ngx_str_t                    error;
    ngx_str_t                    username;
    ngx_str_t                    redis;
    /* the Connect or Reconnect form of connect.c, or empty */
    ngx_str_t                    button;
    ngx_uint_t                   connected;
    u_char                       token_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    u_char                       refresh_fp[NGX_HTTP_SF_OAUTH_FP_LEN];
    time_t                       now;
} ngx_http_sf_oauth_console_t;


static ngx_uint_t ngx_http_sf_oauth_console_wants_json(ngx_http_request_t *r);
static void ngx_http_sf_oauth_console_read(ngx_http_sf_oauth_console_t *c,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node);
static size_t ngx_http_sf_oauth_console_len(ngx_http_sf_oauth_console_t *c);
static u_char *ngx_http_sf_oauth_console_html(u_char *p, u_char *last,
    ngx_http_sf_oauth_console_t *c);
static u_char *ngx_http_sf_oauth_console_json(u_char *p, u_char *last,
    ngx_http_sf_oauth_console_t *c);
static u_char *ngx_http_sf_oauth_console_html_str(u_char *p, u_char *last,
    const char *before, u_char *s, size_t len, const char *after);
static ngx_int_t ngx_http_sf_oauth_console_vary(ngx_http_request_t *r);
static ngx_int_t ngx_http_sf_oauth_console_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *title, const char *text);


static const char  *ngx_http_sf_oauth_console_grants[] = {
    "refresh_token", "jwt_bearer", "client_credentials"
};


static u_char  ngx_http_sf_oauth_console_head[] =
    "<h1>Salesforce credentials</h1>\n"
    "<table>\n<tr><th>credential</th><th>grant</th><th>zone</th>"
    "<th>state</th><th>user and org</th><th>token</th><th>last error</th>"
    "<th>API usage</th><th>fleet</th><th></th></tr>\n";

static u_char  ngx_http_sf_oauth_console_foot[] =
    "</table>\n<p>Secrets are shown as fingerprints only.</p>\n";


ngx_int_t
ngx_http_sf_oauth_console_handler(ngx_http_request_t *r)
{
    u_char                         *p, *last;
    size_t                          len;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_str_t                       title, rest, origins;
    ngx_uint_t                      i, n, json;
    ngx_chain_t                    *out;
    ngx_http_sf_oauth_node_t       *nodes;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_core_loc_conf_t       *clcf;
    ngx_http_sf_oauth_console_t    *c;
    ngx_http_sf_oauth_main_conf_t  *smcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    /* the flow's code, state and cookie never reach a log */
    ngx_http_sf_oauth_redact_flow_install(r);

    /* the web server flow's routes: connect, callback, confirm */

    if (r->uri.len > clcf->name.len
        && ngx_strncmp(r->uri.data, clcf->name.data, clcf->name.len) == 0)
    {
        rest.data = r->uri.data + clcf->name.len;
        rest.len = r->uri.len - clcf->name.len;

        rc = ngx_http_sf_oauth_connect_route(r, &rest);
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (r->uri.len != clcf->name.len
        || ngx_strncmp(r->uri.data, clcf->name.data, r->uri.len) != 0)
    {
        return ngx_http_sf_oauth_console_error(r, NGX_HTTP_NOT_FOUND,
                                               "Not found",
                                               "The console has no such "
                                               "page.");
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_sf_oauth_console_error(r, NGX_HTTP_NOT_ALLOWED,
                                               "Method not allowed",
                                               "The console's page takes "
                                               "GET and HEAD only.");
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_sf_oauth_module);
    cred = smcf->creds.elts;
    n = smcf->creds.nelts;

    json = ngx_http_sf_oauth_console_wants_json(r);

    /* each credential from one snapshot: read, sized, then printed */

    nodes = ngx_palloc(r->pool,
                       ngx_max(n, 1) * sizeof(ngx_http_sf_oauth_node_t));
    c = ngx_palloc(r->pool,
                   ngx_max(n, 1) * sizeof(ngx_http_sf_oauth_console_t));
    if (nodes == NULL || c == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = json ? sizeof("{\"credentials\":[\n]}\n")
               : sizeof(ngx_http_sf_oauth_console_head)
                 + sizeof(ngx_http_sf_oauth_console_foot);

    for (i = 0; i < n; i++) {
        ngx_http_sf_oauth_store_snapshot(cred[i], &nodes[i]);
        ngx_http_sf_oauth_console_read(&c[i], cred[i], &nodes[i]);

        /* Connect or Reconnect, for the refresh token grant */
        if (json) {
            ngx_str_null(&c[i].button);

        } else if (ngx_http_sf_oauth_connect_button(r, cred[i],
                                                    &c[i].button)
                   != NGX_OK)
        {
            ngx_explicit_memzero(nodes,
                                 n * sizeof(ngx_http_sf_oauth_node_t));
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        len += ngx_http_sf_oauth_console_len(&c[i]) + c[i].button.len;
    }

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b->last;
    last = b->end;

    if (json) {
        p = ngx_slprintf(p, last, "{\"credentials\":[\n");

    } else {
        p = ngx_cpymem(p, ngx_http_sf_oauth_console_head,
                       sizeof(ngx_http_sf_oauth_console_head) - 1);
    }

    for (i = 0; i < n; i++) {
        if (json) {
            p = ngx_http_sf_oauth_console_json(p, last, &c[i]);
            p = ngx_slprintf(p, last, "%s\n", i + 1 < n ? "," : "");

        } else {
            p = ngx_http_sf_oauth_console_html(p, last, &c[i]);
        }
    }

    ngx_explicit_memzero(nodes, n * sizeof(ngx_http_sf_oauth_node_t));

    if (json) {
        p = ngx_slprintf(p, last, "]}\n");

    } else {
        p = ngx_slprintf(p, last, "%s", ngx_http_sf_oauth_console_foot);
    }

    if (p == last) {
        /* the sizes above are bounds: this is a bug, not a long name */
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "sf_oauth: the console's answer was cut at %uz bytes",
                      len);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->last = p;

    if (ngx_http_sf_oauth_console_vary(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json) {
        if (ngx_http_sf_oauth_page_headers(r, NULL) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_sf_oauth_send(r, NGX_HTTP_OK, "application/json", b);
    }

    out = ngx_alloc_chain_link(r->pool);
    if (out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    out->buf = b;
    out->next = NULL;

    ngx_str_set(&title, "sf_oauth console");

    /* the Connect forms' 303 goes to the authorize URLs' origins */
    if (ngx_http_sf_oauth_connect_form_action(r, &origins) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_sf_oauth_page_send(r, NGX_HTTP_OK, &title, out,
                                       origins.len ? &origins : NULL);
}


/* an Accept header that names application/json */

static ngx_uint_t
ngx_http_sf_oauth_console_wants_json(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Accept") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Accept",
                               sizeof("Accept") - 1) == 0
            && ngx_strlcasestrn(h[i].value.data,
                                h[i].value.data + h[i].value.len,
                                (u_char *) "application/json",
                                sizeof("application/json") - 1 - 1)
               != NULL)
        {
            return 1;
        }
    }
}


/*
 * What the console says of a credential, from a snapshot of its record:
 * its state in the on-call words, first that it is not connected, then
 * that its token is valid, then a refresh in flight, then a hold (a
 * refresh token or secret refused: only an operator fixes it), then a
 * backoff; a record that has asked for nothing yet has no token yet.
 */

static void
ngx_http_sf_oauth_console_read(ngx_http_sf_oauth_console_t *c,
    ngx_http_sf_oauth_cred_t *cred, ngx_http_sf_oauth_node_t *node)
{
    ngx_http_sf_oauth_zone_t  *zone;

    c->cred = cred;
    c->node = node;
    c->now = ngx_time();
    c->connected = 0;

    c->error.data = node->error;
    c->error.len = node->error_len;

    if (ngx_http_sf_oauth_store_not_connected(cred, node)) {
        c->state = "not connected";
        c->error = cred->not_connected;

    } else if (node->state == NGX_HTTP_SF_OAUTH_VALID) {
        c->state = "valid";

    } else if (node->lease_pid != 0
               && (ngx_msec_int_t) (node->lease_deadline - ngx_current_msec)
                  > 0)
    {
        c->state = "refreshing";

    } else if (node->state == NGX_HTTP_SF_OAUTH_FAILED && node->held) {
        c->state = "needs authorization";

    } else if (node->state == NGX_HTTP_SF_OAUTH_FAILED) {
        c->state = "backoff";

    } else {
        c->state = "no token yet";
    }

    if (node->identity_known) {
        c->username.data = node->field[NGX_HTTP_SF_OAUTH_USERNAME];
        c->username.len = node->field_len[NGX_HTTP_SF_OAUTH_USERNAME];

    } else {
        ngx_str_null(&c->username);
    }

    if (node->token_len) {
        ngx_memcpy(c->token_fp, node->token_fp, NGX_HTTP_SF_OAUTH_FP_LEN);

    } else {
        ngx_memset(c->token_fp, '-', NGX_HTTP_SF_OAUTH_FP_LEN);
    }

    if (node->refresh_len) {
        ngx_http_sf_oauth_redact_fingerprint(c->refresh_fp, node->refresh,
                                             node->refresh_len);

    } else {
        ngx_memset(c->refresh_fp, '-', NGX_HTTP_SF_OAUTH_FP_LEN);
    }

    zone = cred->shm_zone->data;

    if (zone->redis) {
        c->redis = zone->redis->name;
        c->connected = ngx_http_sf_oauth_fleet_connected(cred);

    } else {
        ngx_str_null(&c->redis);
    }
}


/* a bound of one credential's row or object: each string escaped at worst */

static size_t
ngx_http_sf_oauth_console_len(ngx_http_sf_oauth_console_t *c)
{
    return NGX_HTTP_SF_OAUTH_CONSOLE_FIXED
           + 6 * (c->cred->name.len + c->cred->zone_name.len
                  + c->cred->connect_url.len + c->error.len
                  + c->username.len + c->redis.len
                  + c->node->org_id_len + c->node->user_id_len
                  + c->node->fleet_owner_len);
}


static u_char *
ngx_http_sf_oauth_console_html(u_char *p, u_char *last,
    ngx_http_sf_oauth_console_t *c)
{
    u_char                    *s;
    ngx_http_sf_oauth_node_t  *node;

    node = c->node;

    p = ngx_http_sf_oauth_console_html_str(p, last, "<tr><td><b>",
                                           c->cred->name.data,
                                           c->cred->name.len, "</b></td>");

    p = ngx_slprintf(p, last, "<td>%s</td>",
                     ngx_http_sf_oauth_console_grants[c->cred->grant]);

    p = ngx_http_sf_oauth_console_html_str(p, last, "<td>",
                                           c->cred->zone_name.data,
                                           c->cred->zone_name.len, "</td>");

    /* the class is the state's words, a space made a dash */

    p = ngx_slprintf(p, last, "<td class=\"");

    for (s = (u_char *) c->state; *s && p < last; s++) {
        *p++ = (*s == ' ') ? '-' : *s;
    }

    p = ngx_slprintf(p, last, "\">%s</td><td>", c->state);

    if (node->org_id_len) {
        p = ngx_http_sf_oauth_console_html_str(p, last, "org <code>",
                                               node->org_id,
                                               node->org_id_len,
                                               "</code><br>");
        p = ngx_http_sf_oauth_console_html_str(p, last, "user <code>",
                                               node->user_id,
                                               node->user_id_len,
                                               "</code>");

        if (c->username.len) {
            p = ngx_http_sf_oauth_console_html_str(p, last, "<br>",
                                                   c->username.data,
                                                   c->username.len, "");
        }

    } else {
        p = ngx_slprintf(p, last, "&ndash;");
    }

    p = ngx_slprintf(p, last, "</td><td>generation %ui", node->generation);

    if (node->token_len) {
        p = ngx_slprintf(p, last, "<br>age %Ts<br>token <code>%*s</code>",
                         c->now - node->token_time,
                         (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, c->token_fp);
    }

    if (node->refresh_len) {
        p = ngx_slprintf(p, last, "<br>refresh token <code>%*s</code>",
                         (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, c->refresh_fp);
    }

    p = ngx_http_sf_oauth_console_html_str(p, last, "</td><td>",
                                           c->error.data, c->error.len,
                                           "</td><td>");

    if (node->api_limit) {
        p = ngx_slprintf(p, last, "%ui of %ui", node->api_used,
                         node->api_limit);

    } else {
        p = ngx_slprintf(p, last, "&ndash;");
    }

    p = ngx_slprintf(p, last, "</td><td>");

    if (c->redis.len) {
        p = ngx_http_sf_oauth_console_html_str(p, last, "redis ",
                                               c->redis.data, c->redis.len,
                                               "");
        p = ngx_slprintf(p, last, " %s<br>fleet generation %ui",
                         c->connected ? "connected" : "not connected",
                         node->fleet_generation);

        if (node->fleet_owner_len) {
            p = ngx_http_sf_oauth_console_html_str(p, last,
                                                   "<br>lease owner <code>",
                                                   node->fleet_owner,
                                                   node->fleet_owner_len,
                                                   "</code>");
        }

    } else {
        p = ngx_slprintf(p, last, "&ndash;");
    }

    p = ngx_slprintf(p, last, "</td><td>");

    if ((size_t) (last - p) > c->button.len) {
        p = ngx_cpymem(p, c->button.data, c->button.len);
    }

    return ngx_slprintf(p, last, "</td></tr>\n");
}


static u_char *
ngx_http_sf_oauth_console_json(u_char *p, u_char *last,
    ngx_http_sf_oauth_console_t *c)
{
    ngx_http_sf_oauth_node_t  *node;

    node = c->node;

    p = ngx_http_sf_oauth_status_json_str(p, last, "{\"name\":",
                                          c->cred->name.data,
                                          c->cred->name.len);

    p = ngx_slprintf(p, last, ",\"grant\":\"%s\"",
                     ngx_http_sf_oauth_console_grants[c->cred->grant]);

    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"zone\":",
                                          c->cred->zone_name.data,
                                          c->cred->zone_name.len);

    p = ngx_slprintf(p, last, ",\"state\":\"%s\"", c->state);

    /* the user: the ids of the token's answer, the identity's username */

    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"user\":{\"org_id\":",
                                          node->org_id, node->org_id_len);
    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"user_id\":",
                                          node->user_id, node->user_id_len);

    if (c->username.len) {
        p = ngx_http_sf_oauth_status_json_str(p, last, ",\"username\":",
                                              c->username.data,
                                              c->username.len);
        p = ngx_slprintf(p, last, "}");

    } else {
        p = ngx_slprintf(p, last, ",\"username\":null}");
    }

    p = ngx_slprintf(p, last, ",\"token_age\":%T,\"generation\":%ui,"
                     "\"token_fp\":\"%*s\",\"refresh_token_fp\":\"%*s\"",
                     node->token_len ? c->now - node->token_time
                                     : (time_t) -1,
                     node->generation,
                     (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, c->token_fp,
                     (size_t) NGX_HTTP_SF_OAUTH_FP_LEN, c->refresh_fp);

    p = ngx_http_sf_oauth_status_json_str(p, last, ",\"error\":",
                                          c->error.data, c->error.len);

    if (node->api_limit) {
        p = ngx_slprintf(p, last, ",\"api_usage\":{\"used\":%ui,"
                         "\"limit\":%ui}", node->api_used, node->api_limit);

    } else {
        p = ngx_slprintf(p, last, ",\"api_usage\":null");
    }

    if (c->redis.len) {
        p = ngx_http_sf_oauth_status_json_str(p, last,
                                              ",\"fleet\":{\"redis\":",
                                              c->redis.data, c->redis.len);
        p = ngx_slprintf(p, last, ",\"connected\":%s,"
                         "\"fleet_generation\":%ui",
                         c->connected ? "true" : "false",
                         node->fleet_generation);
        p = ngx_http_sf_oauth_status_json_str(p, last, ",\"lease_owner\":",
                                              node->fleet_owner,
                                              node->fleet_owner_len);
        p = ngx_slprintf(p, last, "}");

    } else {
        p = ngx_slprintf(p, last, ",\"fleet\":null");
    }

    if (c->cred->connect_url.len) {
        p = ngx_http_sf_oauth_status_json_str(p, last, ",\"connect_url\":",
                                              c->cred->connect_url.data,
                                              c->cred->connect_url.len);

    } else {
        p = ngx_slprintf(p, last, ",\"connect_url\":null");
    }

    return ngx_slprintf(p, last, "}");
}


/* before, the string escaped for HTML, after: all of it if all fits */

static u_char *
ngx_http_sf_oauth_console_html_str(u_char *p, u_char *last,
    const char *before, u_char *s, size_t len, const char *after)
{
    size_t  blen, alen;

    blen = ngx_strlen(before);
    alen = ngx_strlen(after);

    if ((size_t) (last - p)
        < blen + ngx_http_sf_oauth_page_escape_len(s, len) + alen)
    {
        return last;
    }

    p = ngx_cpymem(p, before, blen);
    p = ngx_http_sf_oauth_page_escape(p, s, len);

    return ngx_cpymem(p, after, alen);
}


/* the page and the JSON share the URI: a cache must tell them apart */

static ngx_int_t
ngx_http_sf_oauth_console_vary(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Vary");
    ngx_str_set(&h->value, "Accept");
    h->lowcase_key = NULL;

    return NGX_OK;
}


/* a page of its own for a 404 or 405, with the console's headers */

static ngx_int_t
ngx_http_sf_oauth_console_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *title, const char *text)
{
    u_char           *p;
    size_t            len;
    ngx_buf_t        *b;
    ngx_str_t         t;
    ngx_chain_t      *out;
    ngx_table_elt_t  *h;

    len = sizeof("<h1></h1>\n<p></p>\n") - 1 + ngx_strlen(title)
          + ngx_strlen(text);

    b = ngx_create_temp_buf(r->pool, len);
    out = ngx_alloc_chain_link(r->pool);
    if (b == NULL || out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* constant texts of this file: nothing to escape */
    p = ngx_sprintf(b->last, "<h1>%s</h1>\n<p>%s</p>\n", title, text);
    b->last = p;

    out->buf = b;
    out->next = NULL;

    if (status == NGX_HTTP_NOT_ALLOWED) {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Allow");
        ngx_str_set(&h->value, "GET, HEAD");
        h->lowcase_key = NULL;
    }

    t.data = (u_char *) title;
    t.len = ngx_strlen(title);

    return ngx_http_sf_oauth_page_send(r, status, &t, out, NULL);
}
