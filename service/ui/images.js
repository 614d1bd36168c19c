// Image inputs. A picker is a visible file input (keyboard and screen-reader friendly) whose
// surrounding .picker also takes dropped files and shows previews; "Draw a sample scene" adds a
// scene in the style of the bundled model's shapes world, so the page can be tried without files.

import { h, clear } from "./dom.js";

const COLORS = {
  red: [220, 38, 38],
  green: [34, 170, 60],
  blue: [37, 90, 230],
  yellow: [240, 210, 30],
  purple: [140, 60, 190],
  orange: [250, 135, 20],
};
const SHAPES = ["circle", "square", "triangle"];
const SIZES = { small: 6, large: 11 }; // radius in pixels of a 64 x 64 scene
const BACKGROUNDS = [250, 205, 128, 40]; // grey levels
const SCENE = 64;

const pick = (list) => list[Math.floor(Math.random() * list.length)];

function drawShape(ctx, { color, shape, radius, x, y }) {
  ctx.fillStyle = `rgb(${COLORS[color].join(",")})`;
  ctx.beginPath();
  if (shape === "circle") ctx.arc(x + 0.5, y + 0.5, radius + 0.5, 0, 2 * Math.PI);
  else if (shape === "square") ctx.rect(x - radius, y - radius, 2 * radius + 1, 2 * radius + 1);
  else {
    ctx.moveTo(x + 0.5, y - radius);
    ctx.lineTo(x + radius + 1, y + radius + 1);
    ctx.lineTo(x - radius, y + radius + 1);
    ctx.closePath();
  }
  ctx.fill();
}

/** A random scene of 1-3 shapes that do not overlap -> {name, dataUri, description}. */
function sampleScene() {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = SCENE;
  const ctx = canvas.getContext("2d");
  const grey = pick(BACKGROUNDS);
  ctx.fillStyle = `rgb(${grey},${grey},${grey})`;
  ctx.fillRect(0, 0, SCENE, SCENE);
  const objects = [];
  const wanted = 1 + Math.floor(Math.random() * 3);
  for (let attempt = 0; objects.length < wanted && attempt < 200; attempt++) {
    const size = pick(Object.keys(SIZES));
    const radius = SIZES[size];
    const x = radius + 2 + Math.floor(Math.random() * (SCENE - 2 * radius - 4));
    const y = radius + 2 + Math.floor(Math.random() * (SCENE - 2 * radius - 4));
    const apart = objects.every(
      (o) => Math.max(Math.abs(o.x - x), Math.abs(o.y - y)) > o.radius + radius + 3,
    );
    if (apart) objects.push({ color: pick(Object.keys(COLORS)), shape: pick(SHAPES), size, radius, x, y });
  }
  objects.forEach((o) => drawShape(ctx, o));
  const description = objects.map((o) => `${o.size} ${o.color} ${o.shape}`).join(", ");
  return { name: `${description}.png`, dataUri: canvas.toDataURL("image/png"), description };
}

function readAsDataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name} could not be read (${reader.error?.message})`));
    reader.readAsDataURL(file);
  });
}

/**
 * Wire the file input `input` (inside a `.picker`) -> {images(), clear(), count()}.
 * images() resolves to [{name, dataUri, bytes}] in the order they were chosen.
 */
export function imagePicker(input, { onChange = () => {} } = {}) {
  const root = input.closest(".picker");
  const previews = root.querySelector(".previews");
  const multiple = input.multiple;
  let chosen = []; // {name, bytes, dataUri: Promise<string>, url}

  function render() {
    clear(previews);
    for (const item of chosen) {
      const remove = h("button", {
        type: "button",
        class: "remove",
        "aria-label": `Remove ${item.name}`,
        text: "×",
        onClick: () => {
          chosen = chosen.filter((other) => other !== item);
          if (item.url.startsWith("blob:")) URL.revokeObjectURL(item.url);
          render();
          input.focus();
        },
      });
      previews.append(
        h("li", {}, h("img", { src: item.url, alt: item.name }), h("span", { text: item.name }), remove),
      );
    }
    previews.hidden = chosen.length === 0;
    onChange(chosen.length);
  }

  function add(items) {
    if (!items.length) return;
    if (!multiple) {
      chosen.forEach((item) => item.url.startsWith("blob:") && URL.revokeObjectURL(item.url));
      chosen = [];
    }
    chosen.push(...(multiple ? items : items.slice(0, 1)));
    render();
  }

  const fromFiles = (files) =>
    [...files].map((file) => ({
      name: file.name,
      bytes: file.size,
      dataUri: readAsDataUri(file),
      url: URL.createObjectURL(file),
    }));

  input.addEventListener("change", () => {
    add(fromFiles(input.files));
    input.value = ""; // choosing the same file again is a change too
  });
  root.addEventListener("dragover", (event) => {
    event.preventDefault();
    root.classList.add("dragging");
  });
  root.addEventListener("dragleave", () => root.classList.remove("dragging"));
  root.addEventListener("drop", (event) => {
    event.preventDefault();
    root.classList.remove("dragging");
    add(fromFiles(event.dataTransfer.files));
  });
  root.querySelector("button.sample")?.addEventListener("click", () => {
    const scene = sampleScene();
    add([
      {
        name: scene.name,
        bytes: scene.dataUri.length,
        dataUri: Promise.resolve(scene.dataUri),
        url: scene.dataUri,
      },
    ]);
  });
  render();

  return {
    count: () => chosen.length,
    async images() {
      return Promise.all(
        chosen.map(async (item) => ({ name: item.name, bytes: item.bytes, dataUri: await item.dataUri })),
      );
    },
    clear() {
      chosen.forEach((item) => item.url.startsWith("blob:") && URL.revokeObjectURL(item.url));
      chosen = [];
      render();
    },
  };
}
