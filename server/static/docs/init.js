// Starts Swagger UI on Fellowship's own OpenAPI document. The online validator badge is
// turned off (validatorUrl: null) so the page never contacts a third-party host.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
