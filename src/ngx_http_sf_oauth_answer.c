
/*
 * The SOAP answers the module writes itself, never Salesforce's: a SOAP
 * 1.1 fault for what it refuses or cannot do, and the answer to login()
 * and logout() when the location has sf_oauth_soap_login on.
 */


#include "ngx_http_sf_oauth.h"


static ngx_int_t ngx_http_sf_oauth_answer_escape_text(ngx_pool_t *pool,
    ngx_str_t *s);


/*
 * A SOAP 1.1 fault from the module itself: "Client" for an envelope it
 * refuses, "Server" for what the operator must fix.  The reason never
 * holds a secret: it names what failed, never the content.
 */

ngx_int_t
ngx_http_sf_oauth_answer_fault(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *why)
{
    u_char       *p;
    size_t        len;
    ngx_buf_t    *b;

    static u_char  start[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        "<soapenv:Envelope "
        "xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">"
        "<soapenv:Body><soapenv:Fault><faultcode>soapenv:";
    static u_char  middle[] = "</faultcode><faultstring>sf_oauth: ";
    static u_char  end[] =
        "</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>\n";

    len = sizeof(start) - 1 + sizeof("Client") - 1 + sizeof(middle) - 1
          + why->len + ngx_escape_html(NULL, why->data, why->len)
          + sizeof(end) - 1;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->pos, start, sizeof(start) - 1);
    p = (status < NGX_HTTP_INTERNAL_SERVER_ERROR)
        ? ngx_cpymem(p, "Client", sizeof("Client") - 1)
        : ngx_cpymem(p, "Server", sizeof("Server") - 1);
    p = ngx_cpymem(p, middle, sizeof(middle) - 1);
    p = (u_char *) ngx_escape_html(p, why->data, why->len);
    b->last = ngx_cpymem(p, end, sizeof(end) - 1);

    return ngx_http_sf_oauth_send(r, status, "text/xml; charset=utf-8", b);
}


/*
 * The answer to login() or logout(), from the module itself (the
 * location has sf_oauth_soap_login on).  The username and password in the
 * call go nowhere.  login()'s LoginResult points back at the proxy, as
 * the client reached it, with the paths Salesforce gives; its sessionId
 * is a placeholder that the module replaces in every later call, never
 * the access token.
 */

ngx_int_t
ngx_http_sf_oauth_answer_login(ngx_http_request_t *r,
    ngx_http_sf_oauth_envelope_t *env, ngx_http_sf_oauth_who_t *who,
    ngx_uint_t sandbox)
{
    u_char       *p, *soap, *api, *version, *last;
    size_t        len;
    ngx_buf_t    *b;
    ngx_str_t     host, scheme, prefix, ver, ns, *f, *org_id, *user_id;
    ngx_uint_t    i;

    static u_char  start[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        "<soapenv:Envelope "
        "xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" "
        "xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" "
        "xmlns=\"";

    last = r->uri.data + r->uri.len;

    soap = ngx_strlcasestrn(r->uri.data, last, (u_char *) "/services/Soap/",
                            sizeof("/services/Soap/") - 1 - 1);
    if (soap == NULL || last - soap < 18) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    api = soap + sizeof("/services/Soap/") - 1;
    version = api + 2;

    if (*api == 'u') {
        ngx_str_set(&ns, "urn:partner.soap.sforce.com");

    } else {
        ngx_str_set(&ns, "urn:enterprise.soap.sforce.com");
    }

    for (p = version; p < last && *p != '/'; p++) { /* void */ }

    prefix.data = r->uri.data;
    prefix.len = soap - r->uri.data;
    ver.data = version;
    ver.len = p - version;

#if (NGX_HTTP_SSL)
    if (r->connection->ssl) {
        ngx_str_set(&scheme, "https");
    } else
#endif
    {
        ngx_str_set(&scheme, "http");
    }

    host = r->headers_in.host ? r->headers_in.host->value
                              : r->headers_in.server;

    /* what the client sent is escaped once, then written twice */

    if (ngx_http_sf_oauth_answer_escape_text(r->pool, &host) != NGX_OK
        || ngx_http_sf_oauth_answer_escape_text(r->pool, &prefix) != NGX_OK
        || ngx_http_sf_oauth_answer_escape_text(r->pool, &ver) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the identity service's words, empty when it was not read */

    f = who->field;
    len = 0;

    for (i = 0; i < NGX_HTTP_SF_OAUTH_FIELDS; i++) {
        if (ngx_http_sf_oauth_answer_escape_text(r->pool, &f[i]) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        len += f[i].len;
    }

    org_id = &who->org_id;
    user_id = &who->user_id;

    len += sizeof(start) - 1 + ns.len + 2048
          + 2 * (scheme.len + host.len + prefix.len + ver.len)
          + 4 * NGX_HTTP_SF_OAUTH_ID_MAX;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(b->pos, start, sizeof(start) - 1);
    p = ngx_cpymem(p, ns.data, ns.len);
    p = ngx_cpymem(p, "\"><soapenv:Body>", sizeof("\"><soapenv:Body>") - 1);

    if (env->call == NGX_HTTP_SF_OAUTH_CALL_LOGOUT) {
        p = ngx_cpymem(p, "<logoutResponse/>",
                       sizeof("<logoutResponse/>") - 1);

    } else {
        p = ngx_slprintf(p, b->end,
                "<loginResponse><result>"
                "<metadataServerUrl>%V://%V%V/services/Soap/m/%V/%V"
                "</metadataServerUrl>"
                "<passwordExpired>false</passwordExpired>"
                "<sandbox>%s</sandbox>"
                "<serverUrl>%V://%V%V/services/Soap/%c/%V/%V</serverUrl>"
                "<sessionId>%V!SF_OAUTH_PROXY_SESSION</sessionId>"
                "<userId>%V</userId>"
                "<userInfo>"
                "<accessibilityMode>false</accessibilityMode>"
                "<chatterExternal>false</chatterExternal>"
                "<currencySymbol xsi:nil=\"true\"/>"
                "<orgAttachmentFileSizeLimit>5242880"
                "</orgAttachmentFileSizeLimit>"
                "<orgDefaultCurrencyIsoCode xsi:nil=\"true\"/>"
                "<orgDefaultCurrencyLocale xsi:nil=\"true\"/>"
                "<orgDisallowHtmlAttachments>false"
                "</orgDisallowHtmlAttachments>"
                "<orgHasPersonAccounts>false</orgHasPersonAccounts>"
                "<organizationId>%V</organizationId>"
                "<organizationMultiCurrency>false"
                "</organizationMultiCurrency>"
                "<organizationName></organizationName>"
                "<profileId></profileId>"
                "<roleId xsi:nil=\"true\"/>"
                "<sessionSecondsValid>7200</sessionSecondsValid>"
                "<userDefaultCurrencyIsoCode xsi:nil=\"true\"/>"
                "<userEmail>%V</userEmail>"
                "<userFullName>%V</userFullName>"
                "<userId>%V</userId>"
                "<userLanguage>%V</userLanguage>"
                "<userLocale>%V</userLocale>"
                "<userName>%V</userName>"
                "<userTimeZone>%V</userTimeZone>"
                "<userType>%V</userType>"
                "<userUiSkin>Theme3</userUiSkin>"
                "</userInfo>"
                "</result></loginResponse>",
                &scheme, &host, &prefix, &ver, org_id,
                sandbox ? "true" : "false",
                &scheme, &host, &prefix, (int) *api, &ver, org_id,
                org_id, user_id, org_id,
                &f[NGX_HTTP_SF_OAUTH_EMAIL], &f[NGX_HTTP_SF_OAUTH_FULL_NAME],
                user_id, &f[NGX_HTTP_SF_OAUTH_LANGUAGE],
                &f[NGX_HTTP_SF_OAUTH_LOCALE], &f[NGX_HTTP_SF_OAUTH_USERNAME],
                &f[NGX_HTTP_SF_OAUTH_TIMEZONE],
                &f[NGX_HTTP_SF_OAUTH_USER_TYPE]);
    }

    b->last = ngx_slprintf(p, b->end, "</soapenv:Body></soapenv:Envelope>\n");

    return ngx_http_sf_oauth_send(r, NGX_HTTP_OK, "text/xml; charset=utf-8",
                              b);
}


/* XML-escapes "s" into a copy of its own */

static ngx_int_t
ngx_http_sf_oauth_answer_escape_text(ngx_pool_t *pool, ngx_str_t *s)
{
    u_char  *p;
    size_t   len;

    len = s->len + ngx_escape_html(NULL, s->data, s->len);

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    (void) ngx_escape_html(p, s->data, s->len);

    s->data = p;
    s->len = len;

    return NGX_OK;
}
