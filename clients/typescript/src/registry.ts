/** Every message type the bridge may carry, for Any in JSON and for decoding error details. */
import { createRegistry, type Registry } from "@bufbuild/protobuf";
import { file_asap_v1_agent_service } from "./gen/asap/v1/agent_service_pb.js";
import { file_asap_v1_bridge } from "./gen/asap/v1/bridge_pb.js";
import { file_asap_v1_opaque } from "./gen/asap/v1/opaque_pb.js";
import { file_google_rpc_error_details } from "./gen/google/rpc/error_details_pb.js";
import { file_google_rpc_status } from "./gen/google/rpc/status_pb.js";
import { file_grpc_health_v1_health } from "./gen/grpc/health/v1/health_pb.js";

/** AgentService, the bridge, OpaqueAny, google.rpc details and status, grpc.health.v1. */
export const registry: Registry = createRegistry(
  file_asap_v1_agent_service,
  file_asap_v1_bridge,
  file_asap_v1_opaque,
  file_google_rpc_error_details,
  file_google_rpc_status,
  file_grpc_health_v1_health,
);
