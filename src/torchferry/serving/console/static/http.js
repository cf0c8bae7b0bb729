// HTTP's reason phrases, for a status a person reads ("403 Forbidden").

const REASONS = {
  200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
  401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large",
  422: "Unprocessable", 500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
  503: "Service Unavailable", 504: "Gateway Timeout",
};

export function statusText(status) {
  return status ? `${status} ${REASONS[status] || ""}`.trim() : "no answer";
}
