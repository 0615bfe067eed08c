
/*
 * Whether an error response from Salesforce says that the session is
 * dead, so that a refresh and a replay cure it:
 *
 *   REST       401, unless its body says "This session is not valid for
 *              use with the REST API": a high-assurance session or an IP
 *              policy, which no refresh cures (jsforce does the same);
 *   SOAP       500 with a fault whose faultcode's local name is
 *              INVALID_SESSION_ID;
 *   Bulk 1.0   400 with the exceptionCode InvalidSessionId, in XML or in
 *              JSON;
 *   CometD     a 401 as REST; a 200 to a /meta/handshake or /meta/connect
 *              is a candidate too, and src/ngx_http_sf_oauth_bayeux.c
 *              reads its Bayeux messages.
 *
 * The response filter holds only these candidates, reads at most
 * NGX_HTTP_SF_OAUTH_INSPECT_MAX bytes of their body, and asks here.  Every
 * other response passes untouched.  XML is parsed as the envelope is:
 * libxml2, no DTD, no entity, no network.  A gzip-compressed body (the
 * client accepted gzip, and Salesforce compresses errors too) is
 * inflated first, to at most the same limit, by
 * src/ngx_http_sf_oauth_inflate.c.
 */


#include "ngx_http_sf_oauth.h"

#include <cjson/cJSON.h>
#include <libxml/parser.h>
#include <libxml/tree.h>


static ngx_int_t ngx_http_sf_oauth_verdict_rest(u_char *body, size_t len);
static ngx_int_t ngx_http_sf_oauth_verdict_soap(u_char *body, size_t len);
static ngx_int_t ngx_http_sf_oauth_verdict_bulk(u_char *body, size_t len);
static xmlNodePtr ngx_http_sf_oauth_verdict_child(xmlNodePtr node,
    const char *name);
static ngx_int_t ngx_http_sf_oauth_verdict_text(xmlNodePtr node,
    const char *value, ngx_uint_t qname);
static xmlDocPtr ngx_http_sf_oauth_verdict_xml(u_char *body, size_t len);


/* whether a response may say the session is dead: only these are held */

ngx_int_t
ngx_http_sf_oauth_verdict_candidate(ngx_uint_t kind, ngx_uint_t status)
{
    switch (status) {

    case NGX_HTTP_UNAUTHORIZED:
        return 1;

    case NGX_HTTP_INTERNAL_SERVER_ERROR:
        return kind == NGX_HTTP_SF_OAUTH_SOAP;

    case NGX_HTTP_BAD_REQUEST:
        return kind == NGX_HTTP_SF_OAUTH_BULK;

    case NGX_HTTP_OK:
        /* a CometD handshake or connect: see ngx_http_sf_oauth_bayeux.c */
        return kind == NGX_HTTP_SF_OAUTH_COMETD;

    default:
        return 0;
    }
}


/*
 * 1: the session is dead, 0: the response goes to the client as it is.
 * "whole": the body was read to its end, not cut at the limit.
 */

ngx_int_t
ngx_http_sf_oauth_verdict(ngx_uint_t kind, ngx_uint_t status, u_char *body,
    size_t len, ngx_uint_t whole)
{
    if (status == NGX_HTTP_UNAUTHORIZED) {
        /* a 401 is a dead session unless it says otherwise */
        return !whole || ngx_http_sf_oauth_verdict_rest(body, len);
    }

    if (!whole || len == 0) {
        return 0;
    }

    if (kind == NGX_HTTP_SF_OAUTH_SOAP) {
        return ngx_http_sf_oauth_verdict_soap(body, len);
    }

    if (kind == NGX_HTTP_SF_OAUTH_BULK) {
        return ngx_http_sf_oauth_verdict_bulk(body, len);
    }

    return 0;
}


/* [{"message":"This session is not valid for use with the REST API",...}] */

static ngx_int_t
ngx_http_sf_oauth_verdict_rest(u_char *body, size_t len)
{
    cJSON       *json, *item, *message;
    ngx_int_t    dead;

    json = cJSON_ParseWithLength((char *) body, len);
    if (json == NULL) {
        return 1;
    }

    dead = 1;

    if (cJSON_IsArray(json)) {
        cJSON_ArrayForEach(item, json) {
            message = cJSON_GetObjectItemCaseSensitive(item, "message");

            if (cJSON_IsString(message)
                && ngx_strstr(message->valuestring,
                              "not valid for use with the REST API"))
            {
                dead = 0;
            }
        }
    }

    cJSON_Delete(json);

    return dead;
}


/*
 * <soapenv:Envelope><soapenv:Body><soapenv:Fault>
 *     <faultcode>sf:INVALID_SESSION_ID</faultcode>
 */

static ngx_int_t
ngx_http_sf_oauth_verdict_soap(u_char *body, size_t len)
{
    ngx_int_t   dead;
    xmlDocPtr   doc;
    xmlNodePtr  node;

    doc = ngx_http_sf_oauth_verdict_xml(body, len);
    if (doc == NULL) {
        return 0;
    }

    dead = 0;

    node = xmlDocGetRootElement(doc);

    if (node && ngx_strcmp(node->name, "Envelope") == 0) {
        node = ngx_http_sf_oauth_verdict_child(node, "Body");
        node = ngx_http_sf_oauth_verdict_child(node, "Fault");
        node = ngx_http_sf_oauth_verdict_child(node, "faultcode");

        dead = ngx_http_sf_oauth_verdict_text(node, "INVALID_SESSION_ID", 1);
    }

    xmlFreeDoc(doc);

    return dead;
}


/*
 * <error xmlns="http://www.force.com/2009/06/asyncapi/dataload">
 *     <exceptionCode>InvalidSessionId</exceptionCode>
 * or {"exceptionCode":"InvalidSessionId",...}
 */

static ngx_int_t
ngx_http_sf_oauth_verdict_bulk(u_char *body, size_t len)
{
    u_char      *p, *last;
    cJSON       *json, *code;
    ngx_int_t    dead;
    xmlDocPtr    doc;
    xmlNodePtr   node;

    last = body + len;

    for (p = body; p < last; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            break;
        }
    }

    if (p == last) {
        return 0;
    }

    dead = 0;

    if (*p == '{' || *p == '[') {
        json = cJSON_ParseWithLength((char *) p, last - p);
        if (json == NULL) {
            return 0;
        }

        code = cJSON_GetObjectItemCaseSensitive(cJSON_IsArray(json)
                                                ? cJSON_GetArrayItem(json, 0)
                                                : json,
                                                "exceptionCode");

        dead = cJSON_IsString(code)
               && ngx_strcmp(code->valuestring, "InvalidSessionId") == 0;

        cJSON_Delete(json);

        return dead;
    }

    doc = ngx_http_sf_oauth_verdict_xml(body, len);
    if (doc == NULL) {
        return 0;
    }

    node = xmlDocGetRootElement(doc);

    if (node && ngx_strcmp(node->name, "error") == 0) {
        node = ngx_http_sf_oauth_verdict_child(node, "exceptionCode");
        dead = ngx_http_sf_oauth_verdict_text(node, "InvalidSessionId", 0);
    }

    xmlFreeDoc(doc);

    return dead;
}


/* the first child element with the local name "name" */

static xmlNodePtr
ngx_http_sf_oauth_verdict_child(xmlNodePtr node, const char *name)
{
    if (node == NULL) {
        return NULL;
    }

    for (node = node->children; node; node = node->next) {
        if (node->type == XML_ELEMENT_NODE
            && ngx_strcmp(node->name, name) == 0)
        {
            return node;
        }
    }

    return NULL;
}


/*
 * Whether the text of "node", trimmed, is "value"; with "qname", the
 * local part of a qualified name ("sf:INVALID_SESSION_ID").
 */

static ngx_int_t
ngx_http_sf_oauth_verdict_text(xmlNodePtr node, const char *value,
    ngx_uint_t qname)
{
    u_char     *p, *last, *colon;
    size_t      len;
    xmlChar    *text;
    ngx_int_t   rc;

    if (node == NULL) {
        return 0;
    }

    text = xmlNodeGetContent(node);
    if (text == NULL) {
        return 0;
    }

    p = text;
    last = p + ngx_strlen(p);

    while (p < last && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    while (last > p
           && (last[-1] == ' ' || last[-1] == '\t' || last[-1] == '\r'
               || last[-1] == '\n'))
    {
        last--;
    }

    if (qname) {
        colon = ngx_strlchr(p, last, ':');

        if (colon) {
            p = colon + 1;
        }
    }

    len = ngx_strlen(value);

    rc = ((size_t) (last - p) == len && ngx_strncmp(p, value, len) == 0);

    xmlFree(text);

    return rc;
}


/* a response body as XML: no DTD, no entity, no network, no stderr */

static xmlDocPtr
ngx_http_sf_oauth_verdict_xml(u_char *body, size_t len)
{
    xmlDocPtr  doc;

    if (len > NGX_HTTP_SF_OAUTH_INSPECT_MAX
        || ngx_strlcasestrn(body, body + len, (u_char *) "<!DOCTYPE",
                            sizeof("<!DOCTYPE") - 1 - 1))
    {
        /* a DTD: not Salesforce's answer, and never parsed */
        return NULL;
    }

    doc = xmlReadMemory((char *) body, (int) len, NULL, NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR
                        | XML_PARSE_NOWARNING);
    if (doc == NULL) {
        return NULL;
    }

    if (doc->intSubset || doc->extSubset) {
        xmlFreeDoc(doc);
        return NULL;
    }

    return doc;
}
