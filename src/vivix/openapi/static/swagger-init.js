// Swagger UI for /openapi.json; a file (not an inline script) so the page's CSP can
// forbid inline scripts. validatorUrl null: no badge fetched from an outside validator.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    persistAuthorization: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
  });
});
