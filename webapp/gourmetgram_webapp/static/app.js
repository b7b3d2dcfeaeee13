// Progressive enhancement only: the forms work without this file.
// Adds: drop a photo on the upload box, a preview, and the size check before sending.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) return;
  var zone = document.getElementById("drop-zone");
  var inputs = [document.getElementById("photo"), document.getElementById("camera")];
  var preview = document.getElementById("preview");
  var problem = document.getElementById("client-error");
  var maxBytes = parseInt(inputs[0].getAttribute("data-max-bytes"), 10);

  function say(text) {
    problem.textContent = text;
    problem.hidden = !text;
  }
  function chosen() {
    for (var i = 0; i < inputs.length; i++) {
      if (inputs[i].files && inputs[i].files.length) return inputs[i].files[0];
    }
    return null;
  }
  function check(file) {
    if (!file) { say(""); preview.hidden = true; return true; }
    if (file.size > maxBytes) {
      say(file.name + " is " + (file.size / 1048576).toFixed(1) + " MB; photos up to " +
          (maxBytes / 1048576).toFixed(1) + " MB are accepted. Try a smaller photo.");
      return false;
    }
    say("");
    if (/^image\//.test(file.type) && window.URL) {
      preview.src = URL.createObjectURL(file);
      preview.hidden = false;
    } else {
      preview.hidden = true;
    }
    return true;
  }
  inputs.forEach(function (input) {
    input.addEventListener("change", function () {
      // One photo at a time: choosing in one input clears the other.
      inputs.forEach(function (other) { if (other !== input) other.value = ""; });
      check(input.files && input.files[0]);
    });
  });
  form.addEventListener("submit", function (event) {
    if (!check(chosen())) event.preventDefault();
  });
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    zone.addEventListener(name, function () { zone.classList.remove("over"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    inputs[0].files = event.dataTransfer.files;
    inputs[1].value = "";
    if (check(inputs[0].files[0])) HTMLFormElement.prototype.submit.call(form);
  });
})();
