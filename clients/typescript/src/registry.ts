/** Every message type the bridge may carry, for Any in JSON and for decoding error details. */
import { createRegistry, type Registry } from "@bufbuild/protobuf";
import { file_asap_v1_agent_service } from "./gen/asap/v1/agent_service_pb.js";
import { file_asap_v1_bridge } from "./gen/asap/v1/bridge_pb.js";
import { file_asap_v1_envelope } from "./gen/asap/v1/envelope_pb.js";
import { file_asap_v1_manifest } from "./gen/asap/v1/manifest_pb.js";
import { file_asap_v1_opaque } from "./gen/asap/v1/opaque_pb.js";
import { file_asap_v1_part } from "./gen/asap/v1/part_pb.js";
import { file_asap_v1_payload } from "./gen/asap/v1/payload_pb.js";
import { file_asap_v1_status } from "./gen/asap/v1/status_pb.js";
import { file_asap_v1_task } from "./gen/asap/v1/task_pb.js";
import { file_google_rpc_error_details } from "./gen/google/rpc/error_details_pb.js";
import { file_google_rpc_status } from "./gen/google/rpc/status_pb.js";
import { file_grpc_health_v1_health } from "./gen/grpc/health/v1/health_pb.js";

/** Every asap.v1 type, google.rpc details and status, grpc.health.v1 (a file's imports are not included by createRegistry). */
export const registry: Registry = createRegistry(
  file_asap_v1_agent_service,
  file_asap_v1_bridge,
  file_asap_v1_envelope,
  file_asap_v1_manifest,
  file_asap_v1_opaque,
  file_asap_v1_part,
  file_asap_v1_payload,
  file_asap_v1_status,
  file_asap_v1_task,
  file_google_rpc_error_details,
  file_google_rpc_status,
  file_grpc_health_v1_health,
);
