
/*
 * The operator console, "sf_oauth_console;": at the location's own URI, a
 * page (or, with "Accept: application/json", a JSON) of every credential
 * and its state; any other URI under it is a 404 page, any other method
 * a 405.  Secrets appear only as fingerprints.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_console_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *title, const char *text);


static const char  *ngx_http_sf_oauth_console_grants[] = {
    "refresh_token", "jwt_bearer", "client_credentials"
};


ngx_int_t
ngx_http_sf_oauth_console_handler(ngx_http_request_t *r)
{
    u_char                         *p;
    size_t                          len;
    ngx_int_t                       rc;
    ngx_buf_t                      *b;
    ngx_str_t                       title, rest, *button;
    ngx_uint_t                      i;
    ngx_chain_t                    *out;
    ngx_http_sf_oauth_cred_t      **cred;
    ngx_http_core_loc_conf_t       *clcf;
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

    len = sizeof("<h1>Salesforce credentials</h1>\n<table>\n"
                 "<tr><th>credential</th><th>grant</th><th>zone</th>"
                 "<th></th></tr>\n"
                 "</table>\n") - 1;

    button = ngx_palloc(r->pool, (smcf->creds.nelts + 1) * sizeof(ngx_str_t));
    if (button == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < smcf->creds.nelts; i++) {
        /* Connect or Reconnect, for the refresh token grant */
        if (ngx_http_sf_oauth_connect_button(r, cred[i], &button[i])
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        len += sizeof("<tr><td></td><td>client_credentials</td><td></td>"
                      "<td></td></tr>\n") - 1 + button[i].len
               + ngx_http_sf_oauth_page_escape_len(cred[i]->name.data,
                                                   cred[i]->name.len)
               + ngx_http_sf_oauth_page_escape_len(cred[i]->zone_name.data,
                                                   cred[i]->zone_name.len);
    }

    b = ngx_create_temp_buf(r->pool, len);
    out = ngx_alloc_chain_link(r->pool);
    if (b == NULL || out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->last, "<h1>Salesforce credentials</h1>\n<table>\n"
                   "<tr><th>credential</th><th>grant</th><th>zone</th>"
                   "<th></th></tr>\n",
                   sizeof("<h1>Salesforce credentials</h1>\n<table>\n"
                          "<tr><th>credential</th><th>grant</th>"
                          "<th>zone</th><th></th></tr>\n") - 1);

    for (i = 0; i < smcf->creds.nelts; i++) {
        p = ngx_cpymem(p, "<tr><td>", sizeof("<tr><td>") - 1);
        p = ngx_http_sf_oauth_page_escape(p, cred[i]->name.data,
                                          cred[i]->name.len);
        p = ngx_sprintf(p, "</td><td>%s</td><td>",
                        ngx_http_sf_oauth_console_grants[cred[i]->grant]);
        p = ngx_http_sf_oauth_page_escape(p, cred[i]->zone_name.data,
                                          cred[i]->zone_name.len);
        p = ngx_cpymem(p, "</td><td>", sizeof("</td><td>") - 1);
        p = ngx_cpymem(p, button[i].data, button[i].len);
        p = ngx_cpymem(p, "</td></tr>\n", sizeof("</td></tr>\n") - 1);
    }

    b->last = ngx_cpymem(p, "</table>\n", sizeof("</table>\n") - 1);

    out->buf = b;
    out->next = NULL;

    ngx_str_set(&title, "sf_oauth console");

    return ngx_http_sf_oauth_page_send(r, NGX_HTTP_OK, &title, out, NULL);
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
